"""The alert event as producers write it onto the stream (docs/contracts.md#the-event).

The wire format is JSON, so this model is the single source of truth: the worker validates
every stream entry against it, producers validate before writing, and
``alert_event.schema.json`` is generated from it for producers in other languages.
"""

from __future__ import annotations

import json
import math
import re
import unicodedata
from typing import Annotated, Any, Literal

import phonenumbers
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from schema.wire import MAX_INTEGER_DIGITS, MAX_JSON_DEPTH

METADATA_MAX_BYTES = 4096
DEDUP_WINDOW_MAX_S = 86400
DEFAULT_DEDUP_WINDOW_S = 300
# Rounds: how many times an unacknowledged alert is called, and the pause between rounds.
DEFAULT_ROUNDS = 3
ROUNDS_MAX = 20
DEFAULT_ROUND_DELAY_S = 120
ROUND_DELAY_MAX_S = 86400
DEFAULT_TENANT = "default"

# E.164: a plus, a non-zero country code digit, at most 15 digits in all.
E164_RE = re.compile(r"^\+[1-9]\d{1,14}$")
_SURROGATE_RE = re.compile("[\ud800-\udfff]")
# Separators people type inside phone numbers; removed before E.164 validation.
_PHONE_SEPARATORS_RE = re.compile(r"[\s().\-]")


def strip_control_characters(text: str) -> str:
    """Remove control characters (Unicode category C*, which includes newlines and tabs).

    A spoken message is one line; control characters would either be read out oddly by the
    text-to-speech engine or, worse, be used to smuggle markup past a careless template.
    Newlines and tabs become spaces so words do not run together.
    """
    if text.isprintable():
        # Exact fast path: every category C character (newline and tab included) is
        # non-printable, so for printable text the loop below changes nothing. The converse
        # does not hold (spaces other than U+0020 are non-printable but kept): those go on.
        return text
    return _remove_category_c(text)


def _remove_category_c(text: str) -> str:
    """The definition :func:`strip_control_characters` implements, character by character."""
    text = text.replace("\n", " ").replace("\r", " ").replace("\t", " ")
    return "".join(ch for ch in text if not unicodedata.category(ch).startswith("C"))


def _clean_message(value: str) -> str:
    if _already_clean(value):
        return value
    cleaned = " ".join(strip_control_characters(value).split())
    if not cleaned:
        raise ValueError("must not be blank")
    return cleaned


def _already_clean(text: str) -> bool:
    """True when cleaning would return ``text`` unchanged (most messages): printable text
    has no category C character and no whitespace but U+0020, so only a space at either end
    or two in a row would change."""
    return (
        text.isprintable() and "  " not in text and text[:1] != " " and text[-1:] != " "
        and text != ""
    )


def _metadata_problem(value: dict[str, Any]) -> str | None:
    """What makes ``value`` unstorable or unreadable, if anything. Iterative, so no nesting
    can exhaust the stack; the limits are those of the wire (``schema.wire``)."""
    stack: list[tuple[Any, int]] = [(value, 2)]  # metadata sits at depth 2 in the event
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list):
            if depth > MAX_JSON_DEPTH:
                return f"must not nest more than {MAX_JSON_DEPTH - 1} levels deep"
            children = [*item.keys(), *item.values()] if isinstance(item, dict) else item
            stack.extend((child, depth + 1) for child in children)
        elif isinstance(item, str):
            if "\x00" in item:
                return "must not contain NUL characters (\\u0000)"  # jsonb cannot store it
            if _SURROGATE_RE.search(item):
                return "must be valid Unicode text (no unpaired surrogates)"
        elif isinstance(item, bool):
            continue
        elif isinstance(item, float) and not math.isfinite(item):
            return "must not contain NaN or Infinity (not JSON numbers)"
        elif isinstance(item, int) and abs(item) >= 10**MAX_INTEGER_DIGITS:
            return f"must not contain integers of more than {MAX_INTEGER_DIGITS} digits"
    return None


def _check_metadata_size(value: dict[str, Any]) -> dict[str, Any]:
    problem = _metadata_problem(value)
    if problem:
        raise ValueError(problem)
    size = len(json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode())
    if size > METADATA_MAX_BYTES:
        raise ValueError(f"must be at most {METADATA_MAX_BYTES} bytes as JSON, got {size}")
    return value


def normalize_phone(value: str) -> str:
    """Return ``value`` as E.164, accepting common separators; raise ValueError otherwise.

    Checks the shape only (the caller id, which the provider validates itself); members'
    numbers are also checked against their country's numbering plan (``valid_phone``).
    """
    candidate = _PHONE_SEPARATORS_RE.sub("", value.strip())
    if candidate.startswith("00"):
        candidate = "+" + candidate[2:]
    if not E164_RE.match(candidate):
        raise ValueError("must be a phone number in E.164 format, like +14155550100")
    return candidate


def valid_phone(value: str) -> str:
    """``value`` as E.164 when it is a number its country could dial (``+12`` or
    ``+1415555`` have the shape but not the digits: they would only fail at the provider,
    at 3 a.m.). Uses libphonenumber's numbering plans (the ``phonenumbers`` package)."""
    candidate = normalize_phone(value)
    try:
        number = phonenumbers.parse(candidate, None)
    except phonenumbers.NumberParseException:
        number = None
    if number is None or not phonenumbers.is_valid_number(number):
        raise ValueError("must be a valid phone number for its country, in E.164 format "
                         "like +14155550100 (check the country code and the digits)")
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def _never_null(schema: dict[str, Any]) -> None:
    """The JSON Schema of an optional field that refuses null: absent is its default, so the
    schema shows only its string variant and no ``null`` default."""
    variants = schema.pop("anyOf", [])
    schema.update(next((v for v in variants if v.get("type") != "null"), {}))
    schema.pop("default", None)


IDENTIFIER_MAX_LENGTH = 200
# No control characters in names: they end up in Redis keys, SQL text columns (Postgres
# refuses NUL outright) and log lines.
IDENTIFIER_PATTERN = r"^[^\x00-\x1F\x7F]+$"
Identifier = Annotated[
    str,
    StringConstraints(
        strip_whitespace=True, min_length=1, max_length=IDENTIFIER_MAX_LENGTH,
        pattern=IDENTIFIER_PATTERN,
    ),
]
Message = Annotated[
    str,
    StringConstraints(min_length=1, max_length=1000),
    AfterValidator(_clean_message),
]
Metadata = Annotated[dict[str, Any], AfterValidator(_check_metadata_size)]
Phone = Annotated[str, AfterValidator(valid_phone)]


class AlertEvent(BaseModel):
    """One alert event: the ``event`` field of one stream entry."""

    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        title="AlertEvent",
        json_schema_extra={
            "if": {"properties": {"action": {"const": "trigger"}}},
            "then": {"required": ["group", "message"]},
            "else": {},
            # who acknowledged belongs to an acknowledgement only (_check_acknowledged_by)
            "dependentSchemas": {
                "acknowledged_by": {
                    "properties": {"action": {"const": "ack"}},
                    "required": ["action"],
                }
            },
        },
    )

    alert_id: Identifier = Field(description="Dedup identity of the alert.")
    # Required for a trigger; a resolve names only the alert (see _require_trigger_fields).
    group: Identifier | None = Field(
        default=None, description="Name of the alert group to ring (required to trigger)."
    )
    message: Message | None = Field(
        default=None,
        description="Spoken on the call; control characters removed (required to trigger).",
    )
    tenant: Identifier = Field(
        default=DEFAULT_TENANT, description="Scopes groups and dedup."
    )
    dedup_window_s: int = Field(
        default=DEFAULT_DEDUP_WINDOW_S,
        ge=0,
        le=DEDUP_WINDOW_MAX_S,
        description="Seconds during which the same alert_id rings nobody again; 0 = no dedup.",
    )
    action: Literal["trigger", "resolve", "ack"] = Field(
        default="trigger",
        description="resolve cancels calls not yet answered; ack says someone is on it and "
        "stops the calling.",
    )
    mode: Literal["parallel", "sequential"] = Field(
        default="parallel",
        description="parallel rings everyone; sequential one member at a time.",
    )
    metadata: Metadata = Field(
        default_factory=dict, description="Stored with the alert; at most 4 KiB as JSON."
    )
    event_id: Identifier | None = Field(
        default=None, description="Idempotency key of the event itself."
    )
    # Not nullable (an explicit null is refused by _reject_null, and the schema says string):
    # null means "absent" only for group, message and event_id.
    acknowledged_by: Identifier | None = Field(
        default=None,
        description="Who acknowledged (only with action ack).",
        json_schema_extra=_never_null,
    )
    # None: the group's setting (docs/contracts.md#rounds). Not nullable on the wire.
    rounds: int | None = Field(
        default=None, ge=1, le=ROUNDS_MAX,
        description="Rounds of calls at most while nobody acknowledges (default: the group's).",
        json_schema_extra=_never_null,
    )
    round_delay_s: int | None = Field(
        default=None, ge=0, le=ROUND_DELAY_MAX_S,
        description="Seconds between the end of a round and the next (default: the group's).",
        json_schema_extra=_never_null,
    )

    @field_validator("dedup_window_s", "rounds", "round_delay_s", mode="before")
    @classmethod
    def _reject_non_integers(cls, value: Any, info: ValidationInfo) -> Any:
        # JSON true/false, 1.5 or "30" must not quietly become a window (the JSON Schema
        # says integer; the model must not accept more than the schema does).
        if isinstance(value, bool | str) or (
            isinstance(value, float) and not value.is_integer()
        ):
            unit = " of seconds" if str(info.field_name).endswith("_s") else ""
            raise ValueError(f"must be a whole number{unit}")
        return value

    @field_validator("acknowledged_by", "rounds", "round_delay_s", mode="before")
    @classmethod
    def _reject_null(cls, value: Any, info: ValidationInfo) -> Any:
        if value is None:
            kind = "a string" if info.field_name == "acknowledged_by" else "a whole number"
            raise ValueError(f"must be {kind} (leave the field out instead of null)")
        return value

    @model_validator(mode="after")
    def _check_acknowledged_by(self) -> AlertEvent:
        if self.acknowledged_by is not None and self.action != "ack":
            raise PydanticCustomError(
                "extra_forbidden", "{field}: allowed only with action ack",
                {"field": "acknowledged_by"},
            )
        return self

    @model_validator(mode="after")
    def _require_trigger_fields(self) -> AlertEvent:
        if self.action == "trigger":
            missing = [name for name in ("group", "message") if getattr(self, name) is None]
            if missing:
                raise PydanticCustomError(
                    "missing", "{field}: field required to trigger", {"field": missing[0]}
                )
        return self

    @property
    def is_trigger(self) -> bool:
        return self.action == "trigger"

    def to_entry(self) -> dict[str, str]:
        """The stream entry fields for this event: one field, ``event``
        (docs/contracts.md#the-stream), without the fields that equal their defaults: the
        worker applies the same defaults, and a typical trigger is 65 bytes instead of 156."""
        # The serializer itself: model_dump_json's wrapper costs as much as the work.
        return {"event": _SERIALIZE(self, exclude_defaults=True).decode()}


_SERIALIZE = AlertEvent.__pydantic_serializer__.to_json


class Member(BaseModel):
    """One member of an alert group, in ring order (a whole group: ``schema.group``).

    Rows read back from the database are built without validation (``model_construct``):
    a stored member stays callable when libphonenumber's plans change.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: Identifier
    phone: Phone


def describe_errors(exc: ValidationError) -> list[tuple[str, str]]:
    """(field, reason) for each problem, phrased for a person: what producers raise, what
    dead letters record and what the CLI prints all read the same."""
    problems = []
    for error in exc.errors():
        field = ".".join(str(part) for part in error.get("loc", ()))
        if error["type"] == "string_pattern_mismatch":
            reason = "must not contain control characters"
        elif error["type"] == "string_unicode":  # an unpaired surrogate, e.g. "\ud800"
            reason = "must be valid Unicode text"
        else:
            reason = str(error["msg"]).removeprefix("Value error, ")
        if not field and ": " in reason:  # a model-level check that names its field itself
            field, reason = reason.split(": ", 1)
        problems.append((field or "event", reason))
    return problems
