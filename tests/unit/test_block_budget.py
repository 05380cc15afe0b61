"""The daemon-wide budget of EBS blocks in memory, and the loader that parses a
botocore model once however many migrations ask for it at once."""

from __future__ import annotations

import threading

from migratio.drivers.aws.block_budget import BlockBudget
from migratio.drivers.aws.session import _OneParseLoader, _PlainJsonFiles


def test_a_lone_writer_fills_its_window_even_beyond_the_budget() -> None:
    budget = BlockBudget(limit=4)
    assert all(budget.take(window=6, own=n, timeout=0) for n in range(6))
    assert not budget.take(window=6, own=6, timeout=0)
    assert budget.held == 6


def test_writers_together_stay_within_the_budget_and_none_starves() -> None:
    budget = BlockBudget(limit=4)
    assert all(budget.take(window=3, own=n, timeout=0) for n in range(3))
    assert budget.take(window=3, own=0, timeout=0)  # a second writer's first block
    assert not budget.take(window=3, own=1, timeout=0)  # its second waits for room
    assert budget.take(window=3, own=0, timeout=0)  # a third writer still gets one
    assert budget.held == 5


def test_a_block_given_back_wakes_a_waiting_writer() -> None:
    budget = BlockBudget(limit=1)
    assert budget.take(window=1, own=0, timeout=0)
    taken: list[bool] = []
    waiter = threading.Thread(target=lambda: taken.append(budget.take(1, 1, timeout=10)))
    waiter.start()
    budget.give()
    waiter.join(10)
    assert taken == [True]
    assert budget.held == 1


def test_models_asked_for_at_once_are_parsed_once() -> None:
    # EC2's model: large enough that four unguarded loads always overlap (measured).
    loader = _OneParseLoader(file_loader=_PlainJsonFiles())
    models: list[object] = []
    start = threading.Barrier(4)

    def load() -> None:
        start.wait()
        models.append(loader.load_service_model("ec2", "service-2"))

    threads = [threading.Thread(target=load) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(models) == 4
    assert all(model is models[0] for model in models)
