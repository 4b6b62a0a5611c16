"""The call-provider boundary: what placing, following and canceling a call needs.

Two implementations: :mod:`worker.twilio_provider` (the real twilio client) and
:mod:`worker.simulated` (the default without credentials). Everything after this boundary
(attempts, retries, status updates, escalation) is the same code for both.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Protocol


@dataclass(frozen=True)
class ProviderCall:
    sid: str
    status: str  # Twilio's vocabulary: queued, ringing, in-progress, completed, busy, ...
    to: str
    created_at: datetime | None = None
    duration_s: int | None = None
    answered_by: str | None = None
    # The key pressed, as the simulated provider reports it (Twilio posts it to the
    # Gather's action instead: worker/webhooks.py).
    digits: str | None = None


@dataclass(frozen=True)
class CallOptions:
    """What a call asks of the provider beyond number and TwiML: where to report its
    progress (``status_callback``, every event, POST), answering machine detection
    (``machine_detection``: Enable or DetectMessageEnd), and where to report its result
    while the call goes on (``amd_callback``; without it, detection holds the TwiML until it
    has decided)."""

    status_callback: str | None = None
    machine_detection: str | None = None
    amd_callback: str | None = None


#: A call with no options: followed by polling only.
NO_OPTIONS = CallOptions()


class ProviderError(Exception):
    """Base of provider failures; subclasses say what may be done next."""

    def __init__(self, message: str, *, code: int | None = None, http_status: int | None = None):
        super().__init__(message)
        self.code = code
        self.http_status = http_status


class PermanentProviderError(ProviderError):
    """The provider refused the call and will refuse it again (bad number, auth, geo)."""


class ThrottledProviderError(ProviderError):
    """The provider certainly did not create the call and asks us to slow down (429), or the
    connection was refused before anything was sent."""


class AmbiguousProviderError(ProviderError):
    """The request may or may not have created a call (timeout, 5xx, dropped connection):
    look the call up before placing it again."""


class CallProvider(Protocol):
    """What voicealert needs from a telephony provider."""

    name: str

    async def create_call(
        self, *, to: str, twiml: str, options: CallOptions = NO_OPTIONS
    ) -> ProviderCall: ...

    async def fetch_call(self, sid: str) -> ProviderCall: ...

    async def find_calls(self, *, to: str, since: datetime) -> list[ProviderCall]:
        """Calls to ``to`` created at or after ``since`` (the lookup before a re-POST)."""
        ...

    async def cancel_call(self, sid: str) -> ProviderCall: ...

    async def hang_up(self, sid: str) -> ProviderCall:
        """End a call, answered or not (an answering machine that is not to hear more)."""
        ...

    async def speak(self, sid: str, twiml: str) -> ProviderCall:
        """Replace what an answered call plays (a voicemail for an answering machine)."""
        ...

    async def aclose(self) -> None: ...
