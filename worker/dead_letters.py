"""Dead letters: what could not be done, with why, kept until an operator acts.

Sources: ``ingest`` (stream entries: invalid, unknown group, poison) and ``call`` (calls the
provider refused, exhausted retries, stale). Each letter has a ``letter_key`` naming what it
is about, so the same failure seen twice (a redelivery) is lettered once.
"""

from __future__ import annotations

from typing import Any

from worker.db import NewDeadLetter


def ingest_letter(
    payload: dict[str, Any], *, reason: str, error: str, stream_id: str, attempts: int = 1
) -> NewDeadLetter:
    return NewDeadLetter(
        source="ingest",
        reason=reason,
        error=error,
        payload=payload,
        letter_key=f"stream:{stream_id}",
        attempts=attempts,
    )


def call_letter(
    call_id: int, attempt: int, *, reason: str, error: str, payload: dict[str, Any]
) -> NewDeadLetter:
    return NewDeadLetter(
        source="call",
        reason=reason,
        error=error,
        payload={"call_id": call_id, **payload},
        letter_key=f"call:{call_id}:{attempt}",
        attempts=attempt,
        call=call_id,
    )
