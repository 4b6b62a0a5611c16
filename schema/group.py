"""An alert group as operators write it: tenant, name, and the members in ring order.

One set of rules for every way a group is written (``voicealert groups set``, the HTTP API's
group admin), checked before any SQL: a group that passes them is one an event can address
and whose members each ring once. What they refuse, and why:

- a tenant that is empty, padded with spaces or over 200 characters, and a name with
  control characters or over 200 characters: events strip and check their identifiers the
  same way, so such a group could never be addressed (docs/contracts.md#identifiers);
- a member whose phone is not a number its country could dial (``valid_phone``);
- the same member twice (names compared ignoring case) or the same phone twice: one person
  would be called twice, and a replay would not know which entry was meant;
- more than ``MAX_GROUP_MEMBERS`` members;
- rounds outside 1–``ROUNDS_MAX``, a round delay outside 0–``ROUND_DELAY_MAX_S`` seconds.
  Left out (None), a new group gets the defaults (3 rounds, 120 s) and a replaced group keeps
  its own: replacing the members does not reset them.

Errors read like every other validation error (``describe_errors``): field paths such as
``members.1.phone`` with a reason.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    model_validator,
)
from pydantic_core import PydanticCustomError

from schema.event import (
    DEFAULT_TENANT,
    IDENTIFIER_MAX_LENGTH,
    IDENTIFIER_PATTERN,
    ROUND_DELAY_MAX_S,
    ROUNDS_MAX,
    Identifier,
    Member,
)

MAX_GROUP_MEMBERS = 1000


def _not_padded(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be blank")
    if value != value.strip():
        raise ValueError("must not start or end with whitespace")
    return value


# A tenant is not trimmed for the operator: " acme" is a typo to report, not a new tenant.
Tenant = Annotated[
    str,
    StringConstraints(min_length=1, max_length=IDENTIFIER_MAX_LENGTH, pattern=IDENTIFIER_PATTERN),
    AfterValidator(_not_padded),
]


class TenantScope(BaseModel):
    """A tenant named by an operator (``--tenant``, a URL)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    tenant: Tenant = DEFAULT_TENANT


class GroupKey(TenantScope):
    """What names a stored group: looking one up checks the same rules as writing it."""

    name: Identifier


class GroupSpec(GroupKey):
    """A group to store: validated whole, so nothing is half-written."""

    members: list[Member] = Field(max_length=MAX_GROUP_MEMBERS)
    rounds: int | None = Field(default=None, ge=1, le=ROUNDS_MAX, strict=True)
    round_delay_s: int | None = Field(default=None, ge=0, le=ROUND_DELAY_MAX_S, strict=True)

    @model_validator(mode="after")
    def _each_member_once(self) -> GroupSpec:
        names: set[str] = set()
        phones: set[str] = set()
        for index, member in enumerate(self.members):
            if member.name.casefold() in names:
                raise _duplicate(index, "name", "is already an earlier member's name "
                                 "(each member once; names compare ignoring case)")
            if member.phone in phones:
                raise _duplicate(index, "phone", "is already an earlier member's phone "
                                 "(each number once, or it would ring twice)")
            names.add(member.name.casefold())
            phones.add(member.phone)
        return self


def _duplicate(index: int, field: str, reason: str) -> PydanticCustomError:
    # describe_errors splits "field: reason" for model-level errors.
    return PydanticCustomError(
        "duplicate_member", "{field}: {reason}", {"field": f"members.{index}.{field}",
                                                   "reason": reason}
    )


def group_spec(
    tenant: str, name: str, members: list[dict[str, Any]], *, rounds: int | None = None,
    round_delay_s: int | None = None,
) -> GroupSpec:
    """Validate a group given as plain values; raises pydantic.ValidationError."""
    return GroupSpec.model_validate({"tenant": tenant, "name": name, "members": members,
                                     "rounds": rounds, "round_delay_s": round_delay_s})
