"""Backoff for provider retries: exponential with full jitter (AWS architecture blog)."""

from __future__ import annotations

import random


def backoff_s(
    attempt: int, *, base_s: float, cap_s: float, rng: random.Random | None = None
) -> float:
    """Delay before retry number ``attempt`` (1-based): uniform in [0, min(cap, base·2^n)].

    Full jitter spreads a throttled burst from many replicas instead of re-synchronising it.
    A small floor keeps a retry from landing in the same instant.
    """
    ceiling = min(cap_s, base_s * (2 ** max(0, attempt - 1)))
    return max(0.05, (rng or random).uniform(0, ceiling))  # jitter, not crypto
