"""``limit_malloc_retention``: chunks freed by transfer threads leave the process.

Four threads each stream 100 x 1 MiB chunks through a window of eight (as a
prefetch queue does) while keeping small objects allocated in between; once all
chunks are freed, untuned glibc keeps ~10 MiB of them resident here (measured:
8.6 and 11.6 MiB), tuned it returns them.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

PROGRAM = """
import collections, sys, threading
sys.path.insert(0, sys.argv[1])
from migratio.memory import limit_malloc_retention
assert limit_malloc_retention()

def rss_mib():
    with open("/proc/self/status") as status:
        return int(status.read().split("VmRSS:")[1].split()[0]) / 1024

kept = []

def stream():
    window = collections.deque()
    for _ in range(100):
        window.append(bytes(bytearray(1 << 20)))
        kept.append(bytes(bytearray(300)))
        if len(window) > 8:
            window.popleft()
    window.clear()

before = rss_mib()
threads = [threading.Thread(target=stream) for _ in range(4)]
for thread in threads:
    thread.start()
for thread in threads:
    thread.join()
print(rss_mib() - before)
"""


def test_freed_transfer_chunks_are_returned_to_the_kernel() -> None:
    kept_mib = subprocess.run(
        [sys.executable, "-c", PROGRAM, str(ROOT)], check=True, capture_output=True, text=True
    ).stdout
    assert float(kept_mib) < 3
