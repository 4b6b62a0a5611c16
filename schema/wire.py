"""Reading an event's JSON off the wire, bounded, so no entry can take its reader down.

Python's ``json`` recurses once per nesting level (``RecursionError`` past ~1,000), refuses
integers of more than 4,300 digits (``ValueError``), and accepts ``NaN``, ``Infinity`` and
``1e999``, which Postgres refuses later. Each of those, in one 3 KB entry, once crash-looped
every replica. ``loads_event`` checks before and during decoding and raises ``WireError``
with the dead-letter reason instead (docs/contracts.md#dead-letter-reasons).
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

#: An event is a small object (message ≤ 1000 characters, metadata ≤ 4096 bytes); 64 KiB
#: leaves room for escapes and whitespace.
MAX_EVENT_BYTES = 65_536
#: Nesting levels, counting the event object itself (metadata may nest 30 deep).
MAX_JSON_DEPTH = 32
#: Digits of an integer (a 128-bit id has 39).
MAX_INTEGER_DIGITS = 100

_STRUCTURE = re.compile(rb'[\[\]{}"\\]')


class WireError(Exception):
    """The event's JSON is not one voicealert reads; ``reason`` names why."""

    def __init__(self, reason: str, error: str) -> None:
        super().__init__(f"{reason}: {error}")
        self.reason = reason
        self.error = error


def json_depth_exceeds(raw: bytes, limit: int) -> bool:
    """Whether ``raw`` nests arrays/objects more than ``limit`` deep (brackets inside strings
    do not count). Linear, and it stops at the first level too deep."""
    if raw.count(b"[") + raw.count(b"{") <= limit:
        return False  # no deeper than its opening brackets, strings' included: the usual case
    return _scan_depth_exceeds(raw, limit)


def _scan_depth_exceeds(raw: bytes, limit: int) -> bool:
    depth = 0
    in_string = False
    skip_until = -1  # the character after a backslash inside a string is escaped
    for match in _STRUCTURE.finditer(raw):
        at = match.start()
        if at < skip_until:
            continue
        char = raw[at]
        if in_string:
            if char == 0x5C:  # backslash
                skip_until = at + 2
            elif char == 0x22:  # quote
                in_string = False
        elif char == 0x22:
            in_string = True
        elif char in b"[{":
            depth += 1
            if depth > limit:
                return True
        elif char in b"]}":
            depth -= 1
    return False


def _integer(text: str) -> int:
    if len(text.lstrip("-")) > MAX_INTEGER_DIGITS:
        raise WireError("number_too_large",
                        f"an integer has {len(text.lstrip('-'))} digits; at most "
                        f"{MAX_INTEGER_DIGITS} are read")
    return int(text)


def _float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise WireError("number_too_large",
                        f"a number is out of range ({text[:20]}{'…' if len(text) > 20 else ''})")
    return value


def _constant(name: str) -> Any:
    raise WireError("invalid_json", f"{name} is not a JSON number")


def loads_event(raw: bytes) -> Any:
    """``raw`` decoded as JSON within the bounds above; raises WireError."""
    # Depth first, on at most the bytes the size limit allows: a 100,000-deep array is
    # reported as too deep, found within its first few dozen bytes.
    if json_depth_exceeds(raw[: MAX_EVENT_BYTES + 1], MAX_JSON_DEPTH):
        raise WireError("too_deep", f"event nests more than {MAX_JSON_DEPTH} levels deep")
    if len(raw) > MAX_EVENT_BYTES:
        raise WireError("too_large", f"event is {len(raw)} bytes; at most {MAX_EVENT_BYTES}")
    try:
        return json.loads(raw, parse_int=_integer, parse_float=_float, parse_constant=_constant)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise WireError("invalid_json", f"event is not valid JSON: {exc}") from None
