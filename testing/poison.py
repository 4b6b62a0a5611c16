"""Hostile stream entries, as an attacker or a broken producer writes them (issue 7, item 1).

``POISON``: one entry of each kind that once crash-looped every replica, with the dead-letter
reason voicealert gives it now. ``malformed_entries``: a flood of many kinds of bad entries
(bad JSON, wrong types, deep nesting, huge numbers, NUL, invalid UTF-8, lone surrogates,
unknown fields, 5 KB metadata, huge ids...), deterministic for a seed. ``good_event``: a
valid trigger. Used by the tests and by bench/poison.py (which also runs old code: these are
plain stream fields, nothing of voicealert's).
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from dataclasses import dataclass

Fields = dict[bytes, bytes]


def _event(**fields: object) -> bytes:
    base: dict[str, object] = {"alert_id": "poison", "group": "oncall", "message": "m"}
    return json.dumps({**base, **fields}).encode()


def _nested(depth: int, inner: str = "1") -> str:
    return "[" * depth + inner + "]" * depth


def _nested_objects(depth: int) -> str:
    return '{"a":' * depth + "1" + "}" * depth


@dataclass(frozen=True)
class Poison:
    name: str
    fields: Fields
    reason: str  # the dead-letter reason it must get


POISON: list[Poison] = [
    Poison("metadata nested 1,500 arrays deep",
           {b"event": b'{"alert_id":"p","group":"oncall","message":"m","metadata":{"x":'
                      + _nested(1500).encode() + b"}}"}, "too_deep"),
    Poison("a 100,000-deep array", {b"event": _nested(100_000).encode()}, "too_deep"),
    Poison("metadata nested 900 objects deep",
           {b"event": b'{"alert_id":"p","group":"oncall","message":"m","metadata":'
                      + _nested_objects(900).encode() + b"}"}, "too_deep"),
    Poison("a 5,000-digit number",
           {b"event": b'{"alert_id":"p","group":"oncall","message":"m","metadata":{"n":'
                      + b"9" * 5000 + b"}}"}, "number_too_large"),
    Poison("a 5,000-digit dedup window",
           {b"event": b'{"alert_id":"p","group":"oncall","message":"m","dedup_window_s":'
                      + b"1" * 5000 + b"}"}, "number_too_large"),
    Poison("1e999 in metadata",
           {b"event": b'{"alert_id":"p","group":"oncall","message":"m","metadata":{"f":1e999}}'},
           "number_too_large"),
    Poison("NaN in metadata",
           {b"event": b'{"alert_id":"p","group":"oncall","message":"m","metadata":{"f":NaN}}'},
           "invalid_json"),
    Poison("-Infinity in metadata",
           {b"event": b'{"alert_id":"p","group":"oncall","message":"m",'
                      b'"metadata":{"f":-Infinity}}'}, "invalid_json"),
    Poison("a lone surrogate in metadata",
           {b"event": b'{"alert_id":"p","group":"oncall","message":"m",'
                      b'"metadata":{"s":"\\ud800"}}'}, "invalid_event"),
    Poison("a lone surrogate in the tenant",
           {b"event": b'{"alert_id":"p","group":"oncall","message":"m","tenant":"\\udc00"}'},
           "invalid_event"),
    Poison("NUL in a metadata key",
           {b"event": b'{"alert_id":"p","group":"oncall","message":"m",'
                      b'"metadata":{"k\\u0000":1}}'}, "invalid_event"),
    Poison("a 1 MB event", {b"event": _event(metadata={"x": "y" * 1_000_000})}, "too_large"),
]


def good_event(alert_id: str, group: str = "oncall") -> Fields:
    return {b"event": json.dumps({"alert_id": alert_id, "group": group,
                                  "message": "Primary database is down",
                                  "dedup_window_s": 0}).encode()}


def _malformed(rng: random.Random, i: int) -> Fields:
    kind = i % 16
    if kind == 0:
        return {b"event": b"{not json" + str(i).encode()}
    if kind == 1:
        return {b"event": _event(dedup_window_s="soon", alert_id=f"w{i}")}
    if kind == 2:
        return {b"event": _event(alert_id=f"d{i}", metadata={"x": json.loads(_nested(40))})}
    if kind == 3:
        return {b"event": b'{"alert_id":"n' + str(i).encode() + b'","group":"g","message":"m",'
                          b'"metadata":{"n":' + b"7" * rng.randint(101, 6000) + b"}}"}
    if kind == 4:
        return {b"event": _event(alert_id=f"nul{i}\u0000")}
    if kind == 5:
        return {b"event": b'{"alert_id":"\xff\xfe' + str(i).encode() + b'"}'}
    if kind == 6:
        return {b"event": b'{"alert_id":"s' + str(i).encode() + b'\\udfff","group":"g",'
                          b'"message":"m"}'}
    if kind == 7:
        return {b"event": _event(alert_id=f"u{i}", priority="high")}
    if kind == 8:
        return {b"event": _event(alert_id=f"big{i}", metadata={"blob": "z" * 5000})}
    if kind == 9:
        return {b"event": _event(alert_id="x" * 10_000 + str(i))}
    if kind == 10:
        return {b"nothing": b"here", b"other": str(i).encode()}
    if kind == 11:
        return {b"event": json.dumps([i, "not", "an", "object"]).encode()}
    if kind == 12:
        return {b"event": _event(alert_id=f"m{i}", message="   ")}
    if kind == 13:
        return {b"event": _event(alert_id=f"t{i}", action="explode")}
    if kind == 14:
        return {b"event": b'{"alert_id":"f' + str(i).encode() + b'","group":"g","message":"m",'
                          b'"metadata":{"f":NaN}}'}
    return {b"event": _event(alert_id=f"e{i}", metadata={"deep": json.loads(_nested(5))},
                             mode=rng.choice(["chaotic", 7, None, [1]]))}


def malformed_entries(count: int, seed: int = 7) -> Iterator[Fields]:
    """``count`` invalid entries of 16 kinds, plus the ``POISON`` ones spread among them."""
    rng = random.Random(seed)
    poison_every = max(1, count // (len(POISON) + 1))
    for i in range(count):
        if i % poison_every == poison_every - 1 and i // poison_every < len(POISON):
            yield POISON[i // poison_every].fields
        else:
            yield _malformed(rng, i)
