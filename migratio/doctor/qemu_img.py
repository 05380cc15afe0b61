"""The local tools conversions run: qemu-img, prlimit, which bounds it, and
setpriv, which makes it die with the daemon.

They are needed when some site requires a disk format of its own (``disk_format``
set) or is an AWS site (its uploads are raw or stream-optimized VMDK); without
such a site their absence is a warning."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Sequence
from typing import TYPE_CHECKING

from migratio.config import AwsSite, Site
from migratio.doctor.result import Check, Verdict, fail, ok, warn

if TYPE_CHECKING:
    from migratio.doctor.runner import Chain

VERSION_TIMEOUT = 10.0


def chain(sites: Sequence[Site]) -> Chain:
    from migratio.doctor.runner import Chain

    needed_by = [site.id for site in sites if converts_for(site)]
    return Chain(
        "tools",
        [
            Check("qemu-img", lambda: tool(["qemu-img", "--version"], "qemu-utils", needed_by)),
            Check(
                "prlimit",
                lambda: tool(["prlimit", "--version"], "util-linux", needed_by),
                gate=False,
            ),
            Check(
                "setpriv",
                lambda: tool(["setpriv", "--version"], "util-linux", needed_by),
                gate=False,
            ),
        ],
    )


def converts_for(site: Site) -> bool:
    settings = site.settings
    if isinstance(settings, AwsSite):
        return True
    return getattr(settings, "required_disk_format", None) is not None


def tool(argv: list[str], debian_package: str, needed_by: list[str]) -> Verdict:
    found = shutil.which(argv[0])
    if found is None:
        problem = f"not found on PATH (Debian package {debian_package})"
        if needed_by:
            return fail(f"{problem}; needed for {', '.join(needed_by)}")
        return warn(f"{problem}; no configured site needs a conversion yet")
    try:
        done = subprocess.run(
            [found, *argv[1:]], capture_output=True, text=True, timeout=VERSION_TIMEOUT, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return fail(f"{found} does not run: {exc}")
    first = (done.stdout or done.stderr).strip().splitlines()
    if done.returncode != 0:
        return fail(f"{found} --version exited {done.returncode}: {first[0] if first else ''}")
    return ok(f"{found}: {first[0] if first else 'no version printed'}")
