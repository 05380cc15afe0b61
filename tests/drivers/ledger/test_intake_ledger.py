"""The ledger side of intake on SQLite and a real PostgreSQL: racing consumers record
each job once and start one migration per image, however the jobs are interleaved."""

from __future__ import annotations

import random
import threading

from migratio.ledger.store import JobOutcome, JobRecorded, JobRequest, Ledger


def test_racing_consumers_record_each_job_once_and_one_migration_per_image(
    ledger: Ledger,
) -> None:
    jobs = [
        JobRequest(f"{image:04d}-{copy}", "site-a", "site-b", f"image-{image}", "test")
        for image in range(40)
        for copy in range(3)
    ]
    results: list[JobRecorded] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def consumer(seed: int) -> None:
        # Every consumer sees every job (as after redeliveries), in its own order.
        mine = jobs[:]
        random.Random(seed).shuffle(mine)
        try:
            for start in range(0, len(mine), 8):
                recorded = ledger.accept_jobs(mine[start : start + 8])
                with lock:
                    results.extend(recorded)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=consumer, args=(seed,)) for seed in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert errors == []
    first_time = [r for r in results if r.outcome is not JobOutcome.DUPLICATE]
    assert sorted(r.job.job_id for r in first_time) == sorted(job.job_id for job in jobs)
    created = [r for r in first_time if r.outcome is JobOutcome.CREATED]
    assert sorted(r.job.image_id for r in created) == sorted(f"image-{n}" for n in range(40))
    migration_of = {r.job.image_id: r.migration_id for r in created}
    assert all(r.migration_id == migration_of[r.job.image_id] for r in results)
    assert len(ledger.migrations()) == 40
    assert {m.job_id for m in ledger.migrations()} == {r.job.job_id for r in created}


def test_a_finished_migration_does_not_absorb_a_new_job(ledger: Ledger) -> None:
    [first] = ledger.accept_jobs([JobRequest("job-1", "site-a", "site-b", "img", "test")])
    assert ledger.claim("d1", 30) is not None
    ledger.transition(first.migration_id, "d1", "fail", "boom", last_error="boom")
    [second] = ledger.accept_jobs([JobRequest("job-2", "site-a", "site-b", "img", "test")])
    assert second.outcome is JobOutcome.CREATED
    assert second.migration_id != first.migration_id
