"""The vocabulary of the database: status enums with their sets, and the rows ``db`` returns.

One spelling per status: the SQL CHECK lists of the migrations, ``call_status_rank`` and
these enums (statuses and status sources) are compared by a test
(tests/integration/test_status_vocabulary.py), so a status added in one place and
forgotten in another fails the suite.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

from schema import DEFAULT_ROUND_DELAY_S, DEFAULT_ROUNDS, Member


class CallStatus(StrEnum):
    """A call's status: Twilio's vocabulary plus our ``pending`` and ``dialing``.

    Declared in the order a call moves through them (``call_status_rank`` in SQL); the five
    terminal ones share the last rank, so one terminal status never becomes another.
    """

    PENDING = "pending"  # row written, not dialed yet
    DIALING = "dialing"  # an attempt was written and the POST may be in flight
    QUEUED = "queued"
    RINGING = "ringing"
    IN_PROGRESS = "in-progress"
    COMPLETED = "completed"
    BUSY = "busy"
    NO_ANSWER = "no-answer"
    FAILED = "failed"
    CANCELED = "canceled"


#: A call in one of these never changes again (a database trigger enforces it too).
TERMINAL_CALL_STATUSES = frozenset({
    CallStatus.COMPLETED, CallStatus.BUSY, CallStatus.NO_ANSWER, CallStatus.FAILED,
    CallStatus.CANCELED,
})
#: Someone picked up.
ANSWERED_CALL_STATUSES = frozenset({CallStatus.IN_PROGRESS, CallStatus.COMPLETED})
#: The provider has the call and it has not ended.
LIVE_PROVIDER_STATUSES = frozenset({CallStatus.QUEUED, CallStatus.RINGING, CallStatus.IN_PROGRESS})
#: What answering machine detection reports for a person (Twilio's AnsweredBy).
HUMAN = "human"
#: What answering machine detection reports when no person picked up (Twilio's AnsweredBy).
MACHINE_ANSWERS = frozenset({
    "machine_start", "machine_end_beep", "machine_end_silence", "machine_end_other", "fax",
})
#: At the provider and not answered yet: a resolve cancels these there.
UNANSWERED_CALL_STATUSES = frozenset({CallStatus.QUEUED, CallStatus.RINGING})
#: Twilio words that are not statuses of its Call resource, in ours: ``initiated`` (dialing
#: has started; status callbacks say it) and ``answered`` (the callback event's name).
PROVIDER_STATUS_ALIASES = {"initiated": CallStatus.QUEUED, "answered": CallStatus.IN_PROGRESS}


# Built once: every status the provider reports goes through provider_status.
_PROVIDER_WORDS = {
    **{s.value: s for s in CallStatus if s not in (CallStatus.PENDING, CallStatus.DIALING)},
    **PROVIDER_STATUS_ALIASES,
}


def provider_status(reported: str) -> CallStatus | None:
    """A status as the provider reported it, in our vocabulary; None for a word we do not
    know (``pending`` and ``dialing`` are ours, never the provider's)."""
    return _PROVIDER_WORDS.get(reported)


#: Statuses a call moving to may change what its alert decides (answered, a round over, the
#: next member): not queued or ringing, which leave the call open and active as dialing did.
DECISIVE_CALL_STATUSES = TERMINAL_CALL_STATUSES | {CallStatus.IN_PROGRESS}


class StatusSource(StrEnum):
    """Who changed a call's status (``call_events.source``)."""

    WORKER = "worker"  # placing the call, and the worker's own decisions (new rows, escalation)
    POLL = "poll"  # poll_call read it from the provider
    CALLBACK = "callback"  # a provider status callback reached the web process
    CANCEL = "cancel"  # a resolve canceled the call (here or at the provider)
    OPERATOR = "operator"  # an operator's command (DLQ replay)
    SWEEPER = "sweeper"  # the sweeper repaired a call left behind


class AlertStatus(StrEnum):
    """An alert row's status."""

    CALLING = "calling"  # calls placed or to be placed
    ANSWERED = "answered"  # some member answered
    UNANSWERED = "unanswered"  # every call ended, none answered, not all failed
    FAILED = "failed"  # every call failed
    RESOLVED = "resolved"  # an operator or a service resolved it
    UNKNOWN_GROUP = "unknown_group"  # rang nobody: no such group
    EMPTY_GROUP = "empty_group"  # rang nobody: the group has no members
    ACKNOWLEDGED = "acknowledged"  # someone pressed 1, or an ack event: calling stopped
    UNACKNOWLEDGED = "unacknowledged"  # the last round ended and nobody acknowledged


#: Final: nothing moves an alert out of these (an operator's resolve is final). Answered,
#: unanswered and failed alerts are settled but not final: a DLQ replay calls again.
TERMINAL_ALERT_STATUSES = frozenset({AlertStatus.RESOLVED})
#: No call is placed for an alert in one of these, and nothing but a resolve moves it on.
CALLING_STOPPED_ALERT_STATUSES = frozenset({AlertStatus.RESOLVED, AlertStatus.ACKNOWLEDGED})
#: The event rang nobody; re-sending it (once the group exists) takes it up again.
RANG_NOBODY_ALERT_STATUSES = frozenset({AlertStatus.UNKNOWN_GROUP, AlertStatus.EMPTY_GROUP})
#: What a resolve applies to.
RESOLVABLE_ALERT_STATUSES = frozenset({
    AlertStatus.CALLING, AlertStatus.ANSWERED, AlertStatus.ACKNOWLEDGED,
    AlertStatus.UNACKNOWLEDGED,
})
#: Still ringing people, or about to (``voicealert status`` counts these whatever their age).
OPEN_ALERT_STATUSES = frozenset({AlertStatus.CALLING})
#: What an acknowledgement applies to (an alert that ran out of rounds may still be taken).
ACKNOWLEDGEABLE_ALERT_STATUSES = frozenset({
    AlertStatus.CALLING, AlertStatus.ANSWERED, AlertStatus.UNACKNOWLEDGED,
})


# --- groups -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Group:
    tenant: str
    name: str
    members: list[Member]
    created_at: datetime
    updated_at: datetime
    rounds: int = DEFAULT_ROUNDS
    round_delay_s: int = DEFAULT_ROUND_DELAY_S

    def to_json(self) -> dict[str, Any]:
        return {
            "tenant": self.tenant,
            "name": self.name,
            "members": [m.model_dump() for m in self.members],
            "rounds": self.rounds,
            "round_delay_s": self.round_delay_s,
            "created_at": self.created_at.isoformat(),
            "updated_at": self.updated_at.isoformat(),
        }


# --- alerts and their calls ---------------------------------------------------------------


@dataclass(frozen=True)
class NewAlert:
    tenant: str
    alert_id: str
    event_key: str
    group_name: str
    message: str
    mode: str
    status: AlertStatus
    dedup_window_s: int
    metadata: dict[str, Any]
    event_id: str | None
    stream_id: str
    rounds: int = 1
    round_delay_s: int = DEFAULT_ROUND_DELAY_S


@dataclass(frozen=True)
class CallRef:
    id: int
    position: int
    status: CallStatus


@dataclass(frozen=True)
class StoredAlert:
    id: int
    status: AlertStatus
    mode: str
    created: bool  # False when the event had been processed before (redelivery)
    calls: list[CallRef]


@dataclass(frozen=True)
class Duplicate:
    tenant: str
    owner_key: str
    stream_id: str
    alert_id: str
    event_id: str | None


@dataclass(frozen=True)
class LiveCall:
    id: int
    provider_sid: str | None
    status: CallStatus


@dataclass(frozen=True)
class Keypress:
    """What pressing 1 on a call did: the member who pressed, the alerts it acknowledged
    (those still open), and the other calls of those alerts to hang up at the provider."""

    member_name: str
    acknowledged: int
    to_cancel: list[LiveCall]


@dataclass(frozen=True)
class CallJob:
    """A call with what placing it needs from its alert."""

    id: int
    alert: int
    position: int
    member_name: str
    phone: str
    status: CallStatus
    provider_sid: str | None
    attempts: int
    attempt_started_at: datetime | None
    created_at: datetime
    alert_id: str
    tenant: str
    message: str
    mode: str
    alert_status: AlertStatus
    received_at: datetime
    answered_by: str | None = None
    acknowledged_at: datetime | None = None
    stream_id: str | None = None  # the entry that created the alert (its id is the XADD time)
    merged_into: int | None = None


@dataclass(frozen=True)
class LineClaim:
    """What claiming a number for a call decided (``db.claim_line``): ``claimed`` (placed now,
    with the calls merged into it, as attempt ``attempt``), ``busy`` (the number is being
    called), ``window`` (the merge window is open for ``wait_s`` more seconds), ``gone``
    (merged into another call, or not pending any more)."""

    kind: str
    attempt: int | None = None
    merged: list[int] = field(default_factory=list)
    wait_s: float = 0.0
    #: What the claimed call speaks: its own alert's message, then those merged into it.
    messages: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class CallUpdate:
    status: CallStatus
    source: StatusSource  # recorded in call_events with the change
    provider_sid: str | None = None
    duration_s: int | None = None
    answered_by: str | None = None
    error_code: int | None = None
    error_message: str | None = None


@dataclass(frozen=True)
class CallEvent:
    """One change of a call's status, as ``call_events`` records it."""

    id: int
    call: int
    status: CallStatus
    source: StatusSource
    detail: str | None
    at: datetime


@dataclass(frozen=True)
class AlertProgress:
    id: int
    mode: str
    status: AlertStatus
    total: int
    open: int
    answered: int
    failed: int
    next_pending: int | None
    on_the_line: int = 0  # calls answered and not ended
    round: int = 1
    rounds: int = 1
    next_round_at: datetime | None = None


@dataclass(frozen=True)
class RoundStart:
    """A round of calls begun (``started``), or found begun already: its calls to place."""

    round: int
    mode: str
    started: bool
    pending: list[int]


@dataclass(frozen=True)
class AlertCallEvent:
    """One change of one of an alert's calls, with the member it rang."""

    id: int
    call: int
    round: int
    position: int
    member_name: str
    phone: str
    status: str  # a CallStatus value
    source: str  # a StatusSource value
    detail: str | None
    at: datetime


@dataclass(frozen=True)
class DuplicateSpan:
    """Triggers suppressed by one alert's dedup lock: how many, first and last."""

    count: int
    first: datetime | None
    last: datetime | None


@dataclass(frozen=True)
class CallRow:
    id: int
    alert_id: str
    tenant: str
    position: int
    member_name: str
    phone: str
    status: CallStatus
    provider_sid: str | None
    attempts: int
    possible_duplicates: int
    error_code: int | None
    error_message: str | None
    answered_by: str | None
    duration_s: int | None
    created_at: datetime
    updated_at: datetime
    ended_at: datetime | None
    round: int
    acknowledged_at: datetime | None
    acknowledged_by: str | None
    merged_into: int | None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = dict(self.__dict__)
        out["status"] = str(self.status)
        for key in ("created_at", "updated_at", "ended_at", "acknowledged_at"):
            if out[key] is not None:
                out[key] = out[key].isoformat()
        return out


# --- alerts as the HTTP API reads them back -----------------------------------------------


@dataclass(frozen=True)
class AlertCall:
    """One call of an alert, as ``GET /v1/alerts/{alert_id}`` shows it."""

    id: int
    round: int
    position: int
    member_name: str
    phone: str
    status: CallStatus
    attempts: int
    error_code: int | None
    error_message: str | None
    answered_by: str | None
    duration_s: int | None
    created_at: datetime
    updated_at: datetime
    ended_at: datetime | None
    acknowledged_at: datetime | None
    acknowledged_by: str | None


@dataclass(frozen=True)
class AlertRow:
    """One alert row, with its calls when they were asked for."""

    id: int
    tenant: str
    alert_id: str
    group_name: str
    message: str
    mode: str
    status: AlertStatus
    event_id: str | None
    stream_id: str
    duplicates: int
    last_duplicate_at: datetime | None
    received_at: datetime
    updated_at: datetime
    resolved_at: datetime | None
    acknowledged_at: datetime | None
    acknowledged_by: str | None
    round: int
    rounds: int
    next_round_at: datetime | None
    calls: list[AlertCall]


# --- API tokens ---------------------------------------------------------------------------


class TokenScope(StrEnum):
    """What an API token may do (``api_tokens.scope``)."""

    FIRE = "fire"  # send events (fire, resolve, ack, Alertmanager) and read alerts back
    ADMIN = "admin"  # all of that, and administer alert groups


@dataclass(frozen=True)
class ApiToken:
    """A token's row: never the token itself, only what identifies and scopes it."""

    id: int
    tenant: str
    name: str
    scope: TokenScope
    key_id: str
    token_sha256: bytes
    created_at: datetime
    revoked_at: datetime | None

    def to_json(self) -> dict[str, Any]:
        """The token for ``tokens list --json``: no digest, no secret."""
        return {
            "tenant": self.tenant,
            "name": self.name,
            "scope": str(self.scope),
            "key_id": self.key_id,
            "created_at": self.created_at.isoformat(),
            "revoked_at": self.revoked_at.isoformat() if self.revoked_at else None,
        }


# --- what the sweeper compares with Redis ----------------------------------------------------


@dataclass(frozen=True)
class UnfinishedCall:
    """A call not ended yet, with what decides which job should be following it."""

    id: int
    alert: int
    position: int
    status: CallStatus
    merged_into: int | None
    idle_s: float  # since the row last changed
    mode: str
    alert_status: AlertStatus


@dataclass(frozen=True)
class OpenAlert:
    """An alert still calling, or with calls not ended: its progress is decided by jobs."""

    id: int
    status: AlertStatus
    round: int
    next_round_in_s: float | None  # set while waiting for its next round
    idle_s: float
    active: int  # calls of its round being dialed or at the provider
    pending: list[int]  # its round's calls not placed yet, in ring order


@dataclass(frozen=True)
class DedupWindow:
    """A dedup lock that should be held: the alert that took it and what is left of it."""

    tenant: str
    alert_id: str
    owner: str
    remaining_s: int


# --- dead letters -------------------------------------------------------------------------


@dataclass(frozen=True)
class LetterSummary:
    """Dead letters not replayed yet, of one source and reason."""

    source: str
    reason: str
    waiting: int
    recent: int  # of which created recently (the caller says how recently)
    newest: datetime | None


@dataclass(frozen=True)
class NewDeadLetter:
    source: str  # 'ingest' | 'call'
    reason: str
    error: str | None
    payload: dict[str, Any]
    letter_key: str
    attempts: int = 1
    call: int | None = None


@dataclass(frozen=True)
class DeadLetter:
    id: int
    source: str
    reason: str
    error: str | None
    payload: dict[str, Any]
    attempts: int
    letter_key: str
    call: int | None
    created_at: datetime
    replayed_at: datetime | None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = dict(self.__dict__)
        out["created_at"] = self.created_at.isoformat()
        out["replayed_at"] = self.replayed_at.isoformat() if self.replayed_at else None
        return out
