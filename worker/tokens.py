"""API tokens: how they are made, kept and checked (docs/contracts.md#api-tokens).

A token reads ``va_<key_id>_<secret>``: the ``va_`` prefix lets people and secret scanners
recognise it; ``key_id`` (16 hex characters) is public: it finds the token's row and names
the token in logs; ``secret`` is 32 random bytes, base64url. Postgres keeps only the SHA-256
digest of the whole token. A password KDF (bcrypt, scrypt, argon2) exists to slow down the
guessing of low-entropy secrets that people choose; a 256-bit random secret cannot be
guessed, so a plain digest is as safe here, and costs microseconds per request instead of
the tens of milliseconds a KDF is tuned to cost. Digests are compared in constant time.

Revocation is effective at once: while Postgres answers, every request is checked against
its row (one indexed query), with no cache. While Postgres does not answer, a token this
process checked successfully in the last ``FALLBACK_MAX_AGE_S`` is still accepted, so
alerts keep flowing into the stream during a database outage (the workers store them when
it ends); ``refresh`` drops revoked tokens from that memory every ``REFRESH_INTERVAL_S``, so
a revocation made before the outage is honoured within that interval.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass

import asyncpg

from worker import db
from worker.logs import get_logger
from worker.models import ApiToken, TokenScope
from worker.outages import DATABASE_UNAVAILABLE

log = get_logger(__name__)

TOKEN_PREFIX = "va_"  # noqa: S105 - the public prefix of every token, not a secret
_TOKEN_RE = re.compile(r"^va_(?P<key_id>[0-9a-f]{16})_(?P<secret>[A-Za-z0-9_-]{43})$")

#: Bound of the token lookup; beyond it Postgres counts as unreachable.
LOOKUP_TIMEOUT_S = 2.0
#: During a Postgres outage, how long a token checked before it stays accepted.
FALLBACK_MAX_AGE_S = 900.0
#: How often revoked tokens are dropped from the outage fallback.
REFRESH_INTERVAL_S = 5.0


@dataclass(frozen=True)
class NewToken:
    """A token as created: ``token`` is shown once, then only its digest exists."""

    token: str
    key_id: str
    digest: bytes


@dataclass(frozen=True)
class Principal:
    """Who a request acts as: a live token of one tenant, with its scope."""

    tenant: str
    name: str
    scope: TokenScope
    key_id: str

    def may(self, scope: TokenScope) -> bool:
        return self.scope == TokenScope.ADMIN or scope == self.scope


class InvalidToken(Exception):
    """The request's token is malformed, unknown, revoked or wrong (HTTP 401)."""


class TokensUnavailable(Exception):
    """Postgres cannot say whether the token is valid, and no fallback applies (HTTP 503)."""


def new_token() -> NewToken:
    key_id = secrets.token_hex(8)
    token = f"{TOKEN_PREFIX}{key_id}_{secrets.token_urlsafe(32)}"
    return NewToken(token=token, key_id=key_id, digest=digest(token))


def digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def key_id_of(token: str) -> str | None:
    """The key id of a well-formed token, else None (nothing else is looked at)."""
    match = _TOKEN_RE.match(token)
    return match["key_id"] if match else None


@dataclass
class _Checked:
    digest: bytes
    principal: Principal
    checked_at: float


class TokenVerifier:
    """Checks bearer tokens against ``api_tokens`` (one per web process)."""

    def __init__(self, pool: asyncpg.Pool, *, clock: Callable[[], float] = time.monotonic,
                 fallback_max_age_s: float = FALLBACK_MAX_AGE_S) -> None:
        self._pool = pool
        self._clock = clock
        self._fallback_max_age_s = fallback_max_age_s
        self._checked: dict[str, _Checked] = {}

    async def verify(self, token: str) -> Principal:
        key_id = key_id_of(token)
        if key_id is None:
            raise InvalidToken("malformed token")
        presented = digest(token)
        try:
            async with asyncio.timeout(LOOKUP_TIMEOUT_S):
                row = await db.token_by_key_id(self._pool, key_id)
        except DATABASE_UNAVAILABLE as exc:
            return self._fallback(key_id, presented, exc)
        if row is None or row.revoked_at is not None or not hmac.compare_digest(
            row.token_sha256, presented
        ):
            self._checked.pop(key_id, None)
            raise InvalidToken("unknown or revoked token")
        principal = _principal(row)
        self._checked[key_id] = _Checked(presented, principal, self._clock())
        return principal

    def _fallback(self, key_id: str, presented: bytes, error: BaseException) -> Principal:
        checked = self._checked.get(key_id)
        if (
            checked is None
            or self._clock() - checked.checked_at > self._fallback_max_age_s
            or not hmac.compare_digest(checked.digest, presented)
        ):
            raise TokensUnavailable(f"cannot check the token: {type(error).__name__}")
        log.warning("api.token_accepted_from_memory", token=checked.principal.name,
                    tenant=checked.principal.tenant, key_id=key_id,
                    error=type(error).__name__)
        return checked.principal

    async def refresh(self) -> None:
        """Forget tokens revoked (or checked too long ago) since they were last checked."""
        now = self._clock()
        for key_id, checked in list(self._checked.items()):
            if now - checked.checked_at > self._fallback_max_age_s:
                del self._checked[key_id]
        if not self._checked:
            return
        async with asyncio.timeout(LOOKUP_TIMEOUT_S):
            live = await db.live_key_ids(self._pool, list(self._checked))
        for key_id in set(self._checked) - live:
            self._checked.pop(key_id, None)

    async def refresh_forever(self) -> None:
        while True:
            await asyncio.sleep(REFRESH_INTERVAL_S)
            # An outage is what the fallback is for: try again next interval.
            with contextlib.suppress(*DATABASE_UNAVAILABLE):
                await self.refresh()


def _principal(row: ApiToken) -> Principal:
    return Principal(tenant=row.tenant, name=row.name, scope=row.scope, key_id=row.key_id)
