"""Backoff for transient errors.

The schedule is persisted in the ledger (``next_attempt_at``) so it survives
restarts and moves between daemons; an in-process retry loop cannot do that,
which is why this is a formula and not a retry library.
"""

from __future__ import annotations

import random

from migratio.config import RetryPolicy


def backoff_delay(policy: RetryPolicy, attempt: int, rng: random.Random | None = None) -> float:
    """Exponential backoff with equal jitter: half fixed, half random, capped."""
    ceiling = min(policy.max_delay, policy.base_delay * 2.0 ** max(attempt - 1, 0))
    jitter: float = (rng or random).uniform(0, ceiling / 2)
    return ceiling / 2 + jitter
