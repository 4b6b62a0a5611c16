"""API tokens: how they are made, kept and checked (docs/contracts.md#api-tokens).

A token reads ``va_<key_id>_<secret>``: the ``va_`` prefix lets people and secret scanners
recognise it; ``key_id`` (16 hex characters) is public: it finds the token's row and names
the token in logs; ``secret`` is 32 random bytes, base64url. Postgres keeps only the SHA-256
digest of the whole token. A password KDF (bcrypt, scrypt, argon2) exists to slow down the
guessing of low-entropy secrets that people choose; a 256-bit random secret cannot be
guessed, so a plain digest is as safe here, and costs microseconds per request instead of
the tens of milliseconds a KDF is tuned to cost. Digests are compared in constant time.

**Revocation is effective at once.** A token checked in Postgres is remembered by the web
process, and a remembered token is not looked up again while the process *listens* to
revocations: ``tokens revoke`` sends a Postgres ``NOTIFY`` in its own transaction, which
every listening web process receives within milliseconds of the commit and forgets the
token. While the listening connection is down (not connected yet, lost, Postgres
restarting) nothing remembered is trusted: every request is checked in Postgres, and a
reconnected listener first drops whatever was revoked meanwhile. So the memory never
outlives a revocation, and it saves a Postgres round trip on almost every request.

**Postgres down.** While Postgres cannot be reached at all, a token this process checked in
the last ``FALLBACK_MAX_AGE_S`` is still accepted (logged ``api.token_accepted_from_memory``),
so alerts keep flowing into the stream during a database outage, for the workers to store
when it ends. A token never checked by this process answers 503.
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
#: A remembered token is checked in Postgres again after this long, even while listening.
REMEMBER_S = 60.0
#: During a Postgres outage, how long a token checked before it stays accepted.
FALLBACK_MAX_AGE_S = 900.0
#: The listening connection: how often it is probed, and how soon it is reopened.
LISTENER_PROBE_S = 5.0
LISTENER_RETRY_S = 1.0


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
        #: True while a connection listens to revocations: only then is memory trusted.
        self.listening = False

    async def verify(self, token: str) -> Principal:
        key_id = key_id_of(token)
        if key_id is None:
            raise InvalidToken("malformed token")
        presented = digest(token)
        remembered = self._checked.get(key_id)
        if (
            self.listening
            and remembered is not None
            and self._clock() - remembered.checked_at < REMEMBER_S
            and hmac.compare_digest(remembered.digest, presented)
        ):
            return remembered.principal
        try:
            async with asyncio.timeout(LOOKUP_TIMEOUT_S):
                row = await db.token_by_key_id(self._pool, key_id)
        except DATABASE_UNAVAILABLE as exc:
            return self._fallback(key_id, presented, exc)
        if row is None or row.revoked_at is not None or not hmac.compare_digest(
            row.token_sha256, presented
        ):
            if row is None or row.revoked_at is not None:
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

    def forget(self, key_id: str) -> None:
        """A revocation was announced: never accept this token from memory again."""
        self._checked.pop(key_id, None)

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

    async def listen_forever(self, database_url: str) -> None:
        """Hold a connection listening to revocations; reopen it whenever it is lost."""
        while True:
            try:
                await self._listen(database_url)
            except DATABASE_UNAVAILABLE as exc:
                log.debug("api.token_listener_unavailable", error=type(exc).__name__)
            except Exception as exc:  # e.g. not migrated yet: tokens are checked in Postgres
                log.warning("api.token_listener_failed", error=f"{type(exc).__name__}: {exc}")
            finally:
                self.listening = False
            await asyncio.sleep(LISTENER_RETRY_S)

    async def _listen(self, database_url: str) -> None:
        conn = await db.connect(database_url)
        lost = asyncio.Event()
        conn.add_termination_listener(lambda _conn: lost.set())
        try:
            await db.listen_to_token_revocations(conn, self.forget)
            await self.refresh()  # what was revoked while nobody listened
            self.listening = True
            while not lost.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(lost.wait(), LISTENER_PROBE_S)
                if not lost.is_set():  # a silent network loss shows only when we ask
                    async with asyncio.timeout(LOOKUP_TIMEOUT_S):
                        await db.ping(conn)
        finally:
            self.listening = False
            conn.terminate()


def _principal(row: ApiToken) -> Principal:
    return Principal(tenant=row.tenant, name=row.name, scope=row.scope, key_id=row.key_id)
