"""Where Twilio calls back: the web process's webhook paths, and the URLs a call gives Twilio.

Every URL carries the call's own id (``?call=N``): a status callback that arrives before the
create response, or for a call whose sid was never recorded, still finds its row. The URLs
are signed by Twilio as given here, so the web process checks signatures against
``VOICEALERT_PUBLIC_URL`` + path + query: the same string, whatever proxy sits in between.
"""

from __future__ import annotations

from dataclasses import dataclass

#: Status callbacks (StatusCallbackEvent initiated, ringing, answered, completed).
STATUS_PATH = "/twilio/status"
#: The digit pressed in the call's ``<Gather>``.
GATHER_PATH = "/twilio/gather"
#: The answering machine detection result (AsyncAmdStatusCallback).
AMD_PATH = "/twilio/amd"
#: The query parameter naming the call row.
CALL_PARAMETER = "call"


@dataclass(frozen=True)
class WebhookUrls:
    """The absolute URLs of one deployment's webhooks (``public_url`` has no trailing /)."""

    public_url: str

    def status(self, call_id: int) -> str:
        return self._url(STATUS_PATH, call_id)

    def gather(self, call_id: int) -> str:
        return self._url(GATHER_PATH, call_id)

    def amd(self, call_id: int) -> str:
        return self._url(AMD_PATH, call_id)

    def _url(self, path: str, call_id: int) -> str:
        return f"{self.public_url}{path}?{CALL_PARAMETER}={call_id}"
