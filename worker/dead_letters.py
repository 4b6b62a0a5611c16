"""Dead letters: what could not be done, with why, kept until an operator acts.

Sources: ``ingest`` (stream entries: invalid, unknown group, poison) and ``call`` (calls the
provider refused, exhausted retries, stale). Each letter has a ``letter_key`` naming what it
is about, so the same failure seen twice (a redelivery) is lettered once. This module builds
letters; ``db`` writes them, ``replay`` (the operator's ``dlq replay``) reads them back.
"""

from __future__ import annotations

import json
import re
from typing import Any

from schema import DEFAULT_TENANT
from worker import metrics
from worker.entries import Entry
from worker.models import DeadLetter, NewDeadLetter

# Postgres text refuses NUL, and UTF-8 cannot carry an unpaired surrogate (JSON's "\ud800").
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def storable_text(text: str) -> str:
    """``text`` as Postgres can store it (unstorable characters become U+FFFD).

    A letter's error quotes its input (a field name, a provider message): an entry with a NUL
    in a field name must be lettered, not crash the consumer on every redelivery.
    """
    return _UNSTORABLE.sub("\ufffd", text)


# A letter keeps the entry as written, up to this much per field (a Redis entry may hold
# hundreds of megabytes; a jsonb value may not, and the letter must be storable).
MAX_LETTER_FIELD_BYTES = 1 << 20


def entry_payload(entry: Entry) -> dict[str, Any]:
    """The raw entry as JSON-safe text, for a dead letter (``entry_from_payload`` rebuilds
    it exactly, unless it held bytes Postgres cannot store, or a field over 1 MiB, which is
    cut and marked ``"truncated": true``)."""
    payload: dict[str, Any] = {
        "stream_id": entry.stream_id,
        "fields": {_storable(k[:MAX_LETTER_FIELD_BYTES]): _storable(v[:MAX_LETTER_FIELD_BYTES])
                   for k, v in entry.fields.items()},
    }
    if any(len(k) > MAX_LETTER_FIELD_BYTES or len(v) > MAX_LETTER_FIELD_BYTES
           for k, v in entry.fields.items()):
        payload["truncated"] = True
    return payload


def entry_from_payload(payload: dict[str, Any]) -> Entry | None:
    """The stream entry an ingest letter holds, or None when it holds none."""
    raw_fields = payload.get("fields")
    if not isinstance(raw_fields, dict):
        return None
    fields = {str(k).encode(): str(v).encode() for k, v in raw_fields.items()}
    return Entry(str(payload.get("stream_id", "")), fields)


def ingest_letter(entry: Entry, *, reason: str, error: str, attempts: int = 1) -> NewDeadLetter:
    metrics.dead_letter("ingest", reason)
    return NewDeadLetter(
        source="ingest",
        reason=reason,
        error=storable_text(error),
        payload=entry_payload(entry),
        letter_key=f"stream:{entry.stream_id}",
        attempts=attempts,
    )


def call_letter(
    call_id: int, attempt: int, *, reason: str, error: str, payload: dict[str, Any]
) -> NewDeadLetter:
    metrics.dead_letter("call", reason)
    return NewDeadLetter(
        source="call",
        reason=reason,
        error=storable_text(error),
        payload={"call_id": call_id, **payload},
        letter_key=f"call:{call_id}:{attempt}",
        attempts=attempt,
        call=call_id,
    )


def letter_tenant(letter: DeadLetter) -> str | None:
    """The tenant a letter is about: its call's, or its event's (``default`` when the event
    names none); None for an entry too broken to say."""
    if letter.source == "call":
        tenant = letter.payload.get("tenant")
        return tenant if isinstance(tenant, str) else None
    fields = letter.payload.get("fields")
    raw = fields.get("event") if isinstance(fields, dict) else None
    try:
        event = json.loads(raw) if isinstance(raw, str) else None
    except (ValueError, RecursionError):  # not JSON, or nested too deep to read
        return None
    if not isinstance(event, dict):
        return None
    tenant = event.get("tenant", DEFAULT_TENANT)
    return tenant.strip() if isinstance(tenant, str) else None


def _storable(raw: bytes) -> str:
    """Entry bytes as text Postgres can store: invalid UTF-8 and NUL become U+FFFD."""
    return storable_text(raw.decode(errors="replace"))
