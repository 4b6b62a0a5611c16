"""Token checks against real Postgres and the per-token rate limit against real Redis."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from functools import partial

import asyncpg
import pytest
import redis.asyncio

from tests.helpers import make_token, wait_for
from worker import db, tokens
from worker.keys import Keys
from worker.models import TokenScope
from worker.request_limit import RequestLimiter
from worker.tokens import InvalidToken, TokensUnavailable, TokenVerifier


@pytest.fixture
async def pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    created = await db.create_pool(database_url, min_size=0, max_size=2)
    yield created
    await created.close()


async def test_a_live_token_is_its_tenant_name_and_scope(
    pool: asyncpg.Pool, database_url: str
) -> None:
    token = await make_token(database_url, "acme", "grafana", scope="admin")
    principal = await TokenVerifier(pool).verify(token)
    assert (principal.tenant, principal.name, principal.scope) == ("acme", "grafana", "admin")
    assert principal.key_id == tokens.key_id_of(token)
    assert principal.may(TokenScope.FIRE)


@pytest.mark.parametrize("mangle", [
    lambda t: t[:-1] + ("A" if t[-1] != "A" else "B"),  # wrong secret, right key id
    lambda t: t + "A",
    lambda t: t.replace("va_", "vb_"),
    lambda t: "",
    lambda t: "va_" + "0" * 16 + "_" + "A" * 43,  # well formed, unknown
])
async def test_a_wrong_token_is_invalid(
    pool: asyncpg.Pool, database_url: str, mangle: Callable[[str], str]
) -> None:
    token = await make_token(database_url)
    with pytest.raises(InvalidToken):
        await TokenVerifier(pool).verify(mangle(token))


async def test_a_token_checked_before_an_outage_is_accepted_during_it(
    pool: asyncpg.Pool, database_url: str
) -> None:
    token = await make_token(database_url, "acme", "ci")
    never_checked = await make_token(database_url, "acme", "other")
    verifier = TokenVerifier(pool)
    await verifier.verify(token)
    await pool.close()  # Postgres unreachable, as far as this process can tell

    assert (await verifier.verify(token)).name == "ci"
    with pytest.raises(TokensUnavailable):
        await verifier.verify(never_checked)
    with pytest.raises(TokensUnavailable):  # the right key id with a wrong secret: not from memory
        await verifier.verify(token[:-1] + ("A" if token[-1] != "A" else "B"))


async def test_a_token_revoked_before_an_outage_is_refused_during_it_after_a_refresh(
    pool: asyncpg.Pool, database_url: str
) -> None:
    token = await make_token(database_url, "acme", "ci")
    verifier = TokenVerifier(pool)
    await verifier.verify(token)
    await db.revoke_token(pool, "acme", "ci")
    with pytest.raises(InvalidToken):  # at once, while Postgres answers
        await verifier.verify(token)

    await verifier.verify(await make_token(database_url, "acme", "ci2"))
    await db.revoke_token(pool, "acme", "ci2")
    await verifier.refresh()  # what the web process does every REFRESH_INTERVAL_S
    await pool.close()
    with pytest.raises(TokensUnavailable):
        await verifier.verify(token)


async def test_memory_of_a_token_expires_after_the_fallback_age(
    pool: asyncpg.Pool, database_url: str
) -> None:
    now = [1000.0]
    token = await make_token(database_url)
    verifier = TokenVerifier(pool, clock=lambda: now[0], fallback_max_age_s=60)
    await verifier.verify(token)
    await pool.close()
    now[0] += 61
    with pytest.raises(TokensUnavailable):
        await verifier.verify(token)


async def test_the_rate_limit_allows_a_burst_then_one_per_interval(
    redis_url: str, prefix: str
) -> None:
    client = redis.asyncio.Redis.from_url(redis_url)
    try:
        limiter = RequestLimiter(client, Keys(prefix), per_second=5, burst=3)
        verdicts = [await limiter.acquire("k1") for _ in range(4)]
        assert [v.allowed for v in verdicts] == [True, True, True, False]
        assert 0 < verdicts[-1].retry_after_s <= 0.2
        assert verdicts[-1].retry_after_header == "1"
        assert (await limiter.acquire("k2")).allowed  # per token
        await asyncio.sleep(verdicts[-1].retry_after_s + 0.01)
        assert (await limiter.acquire("k1")).allowed
        assert 0 < await client.pttl(Keys(prefix).api_requests("k1")) <= 2000  # expires idle
    finally:
        await client.aclose()


async def _refused(verifier: TokenVerifier, token: str) -> bool:
    try:
        await verifier.verify(token)
    except InvalidToken:
        return True
    return False


async def test_a_listening_verifier_remembers_tokens_and_forgets_revoked_ones_at_once(
    pool: asyncpg.Pool, database_url: str, db_conn: asyncpg.Connection
) -> None:
    token = await make_token(database_url, "acme", "ci")
    other = await make_token(database_url, "acme", "other")
    verifier = TokenVerifier(pool)
    listener = asyncio.create_task(verifier.listen_forever(database_url))
    try:
        await wait_for(partial(_true, lambda: verifier.listening), 10, "listening")
        await verifier.verify(token)
        await verifier.verify(other)
        # Remembered: not looked up again (a row deleted behind its back is not noticed)...
        await db_conn.execute("DELETE FROM api_tokens WHERE name = 'ci'")
        assert (await verifier.verify(token)).name == "ci"
        # ...but a revocation is announced, and forgotten within a moment of the commit.
        started = time.monotonic()
        await db.revoke_token(db_conn, "acme", "other")
        await wait_for(partial(_refused, verifier, other), 5, "the revoked token refused")
        assert time.monotonic() - started < 1.0
    finally:
        listener.cancel()
        await asyncio.gather(listener, return_exceptions=True)
    assert not verifier.listening


async def test_without_a_listener_every_request_is_checked_in_postgres(
    pool: asyncpg.Pool, database_url: str, db_conn: asyncpg.Connection
) -> None:
    token = await make_token(database_url, "acme", "ci")
    verifier = TokenVerifier(pool)  # not listening: memory is not trusted
    await verifier.verify(token)
    await db_conn.execute("DELETE FROM api_tokens WHERE name = 'ci'")
    with pytest.raises(InvalidToken):
        await verifier.verify(token)


async def _true(predicate: Callable[[], bool]) -> bool:
    return predicate()
