"""Runs ``migratio doctor``'s checks: each under a timeout, each site's in order,
the sites side by side, and reports them in a fixed order.

A check that does not answer in time is reported as failed and left behind in
its (daemon) thread: a dead peer must cost the operator ``timeout`` seconds, not
a hang, and Python cannot stop a thread blocked in a socket call. The process
exits soon after, taking such threads with it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from contextlib import suppress
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

from migratio.config import AwsSite, OpenStackSite, OpenStackSshSite, Site
from migratio.doctor import config_files, ledger, qemu_img, redis_server, work_dir
from migratio.doctor.result import Check, CheckResult, Status, Verdict, fail, result, scrubbed
from migratio.errors import MigratioError
from migratio.text import error_text

T = TypeVar("T")

# Long enough for a Keystone token plus Glance version discovery on a slow link;
# short enough that a dead peer is reported while the operator still waits.
DEFAULT_TIMEOUT = 20.0
GIB = 1 << 30
# A conversion (and every AWS upload: a raw disk) is written into the work dir,
# up to the image's virtual size; 10 GiB holds a typical server template.
DEFAULT_MIN_FREE = 10 * GIB


@dataclass(frozen=True)
class Options:
    """timeout: seconds each check may take. min_free: bytes the work dir should
    have free (less is a warning)."""

    timeout: float = DEFAULT_TIMEOUT
    min_free: int = DEFAULT_MIN_FREE


@dataclass
class Chain:
    """The checks of one subject (a site, the ledger) in the order they depend
    on each other. ``subject`` is stripped from the front of error messages that
    already name it; ``close`` releases what the checks opened."""

    subject: str
    checks: Sequence[Check]
    close: Callable[[], None] = field(default=lambda: None)
    # Values no line may show (a password from clouds.yaml), known once loaded.
    secrets: Callable[[], list[str]] = field(default=list)


class TimedOut(Exception):
    pass


# A site's clients wait a little longer than the check may take, so a dead peer
# is reported as the check timing out, not by whichever timer fired first.
CLIENT_GRACE = 1.0


def client_timeout(site_timeout: float, check_timeout: float) -> float:
    """The socket timeout a site's clients get under doctor: the site's own, or
    just over the check's when that is shorter."""
    return min(site_timeout, check_timeout + CLIENT_GRACE)


def bounded(function: Callable[[], T], timeout: float) -> T:
    """``function()``, or TimedOut once ``timeout`` seconds have passed."""
    outcome: dict[str, Any] = {}

    def target() -> None:
        try:
            outcome["value"] = function()
        except BaseException as exc:
            outcome["error"] = exc

    thread = threading.Thread(target=target, name="doctor-check", daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        raise TimedOut
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]  # type: ignore[no-any-return]


def verdict_of(check: Check, timeout: float) -> Verdict:
    """The check's verdict; its errors and its silence are failures, not aborts."""
    try:
        return bounded(check.run, timeout)
    except TimedOut:
        return Verdict(Status.FAIL, f"timed out after {timeout:g} s", halts=True)
    except MigratioError as exc:
        return fail(str(exc))
    except Exception as exc:
        return fail(f"unexpected error: {error_text(exc)}")


def run_chain(chain: Chain, timeout: float) -> list[CheckResult]:
    """The chain's results; it stops at a failed gate check (or one that halts)."""
    results: list[CheckResult] = []
    prefix = f"{chain.subject}: "
    timed_out = False
    for index, check in enumerate(chain.checks):
        verdict = verdict_of(check, timeout)
        detail = scrubbed(verdict.detail, chain.secrets()).removeprefix(prefix)
        halts = verdict.halts or (check.gate and verdict.status is Status.FAIL)
        later = len(chain.checks) - index - 1
        if halts and later:
            noun = "check" if later == 1 else "checks"
            detail += f" ({later} later {noun} of {chain.subject} not run)"
        results.append(result(check.name, replace(verdict, detail=detail)))
        timed_out = verdict.detail.startswith("timed out after")
        if halts:
            break
    if not timed_out:  # a check still running may hold what close() would release
        # Closing is best effort: the verdicts stand.
        with suppress(Exception):
            bounded(chain.close, timeout)
    return results


def run_chains(chains: Sequence[Chain], timeout: float) -> list[CheckResult]:
    """Every chain in its own thread; the results in the order of ``chains``."""
    found: list[list[CheckResult]] = [[] for _ in chains]

    def run(index: int) -> None:
        found[index] = run_chain(chains[index], timeout)

    threads = [
        threading.Thread(target=run, args=(index,), name=f"doctor-{chain.subject}", daemon=True)
        for index, chain in enumerate(chains)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return [item for results in found for item in results]


def site_chain(site: Site, timeout: float) -> Chain:
    """The checks of one site, by its type. Imported on use: each kind of site
    pulls in its cloud's SDK."""
    settings = site.settings
    if isinstance(settings, OpenStackSite):
        from migratio.doctor import openstack_site

        return openstack_site.chain(site.id, settings, timeout)
    if isinstance(settings, AwsSite):
        from migratio.doctor import aws_site

        return aws_site.chain(site.id, settings, timeout)
    if isinstance(settings, OpenStackSshSite):
        from migratio.doctor import ssh_site

        return ssh_site.chain(site.id, settings, timeout)
    raise AssertionError(f"no checks for site type {settings.type!r}")


def diagnose(config_path: Path, options: Options | None = None) -> list[CheckResult]:
    """Every check of this host's migratio, in report order: the config and site
    files, the ledger, Redis, the work dir, qemu-img, then each site."""
    options = options or Options()
    try:
        loaded = bounded(lambda: config_files.load(config_path), options.timeout)
    except TimedOut:
        late = f"{config_path}: timed out after {options.timeout:g} s"
        return [CheckResult("config", Status.FAIL, late)]
    daemon = loaded.daemon
    chains = [qemu_img.chain(loaded.sites)]
    if daemon is not None:
        chains = [
            ledger.chain(daemon),
            redis_server.chain(daemon, options.timeout),
            work_dir.chain(daemon.work_dir, options.min_free),
            *chains,
            *(site_chain(site, options.timeout) for site in loaded.sites),
        ]
    return loaded.results + run_chains(chains, options.timeout)
