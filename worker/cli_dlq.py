"""``voicealert dlq``: dead letters listed, shown, replayed once fixed, purged."""

from __future__ import annotations

import json
import sys
from datetime import datetime

import asyncpg
import click

from worker import db
from worker.cli_support import (
    DATABASE,
    REDIS,
    ROW_ID,
    BadInput,
    ago,
    confirm,
    current_settings,
    json_option,
    print_json,
    run_async,
    since_option,
    tenant_filter_option,
    with_db,
    with_environment,
    yes_option,
)
from worker.connections import close_connection, open_redis
from worker.dead_letters import letter_tenant
from worker.logs import mask_document, mask_phone_numbers
from worker.models import DeadLetter


@click.group()
def dlq() -> None:
    """Dead letters: what could not be done, why, and replaying it once fixed."""


_HEADER = f"{'id':>6}  {'created (UTC)':<19}  {'source':<6} {'reason':<20} error"


def _letter_line(letter: DeadLetter) -> str:
    replayed = f" replayed {letter.replayed_at:%Y-%m-%d %H:%M}" if letter.replayed_at else ""
    error = " ".join((letter.error or "").split())
    return (f"{letter.id:>6}  {letter.created_at:%Y-%m-%d %H:%M:%S}  {letter.source:<6} "
            f"{letter.reason:<20} {mask_phone_numbers(error)[:80]}{replayed}")


@with_environment(DATABASE)
@dlq.command("list")
@click.option("--source", type=click.Choice(["ingest", "call"]), default=None,
              help="Only letters from this source.")
@since_option
@tenant_filter_option
@click.option("--limit", type=click.IntRange(1, 100_000), default=1000, show_default=True)
@json_option
@run_async
async def dlq_list(source: str | None, since: datetime | None, tenant: str | None, limit: int,
                   as_json: bool) -> None:
    """List dead letters, oldest first. --tenant: the tenant of the call, or of the event
    (an entry too broken to name its tenant belongs to none)."""
    fetch = limit if tenant is None else 1_000_000
    letters = await with_db(lambda c: db.list_dead_letters(c, source=source, since=since,
                                                           limit=fetch))
    if tenant is not None:
        letters = [letter for letter in letters if letter_tenant(letter) == tenant][:limit]
    if as_json:
        print_json([letter.to_json() for letter in letters])
    elif not letters:
        click.echo("no dead letters")
    else:
        click.echo(_HEADER)
        for letter in letters:
            click.echo(_letter_line(letter))


async def _letter(conn: asyncpg.Connection, letter_id: int) -> DeadLetter:
    letter = await db.get_dead_letter(conn, letter_id)
    if letter is None:
        raise BadInput(f"no dead letter {letter_id}")
    return letter


@with_environment(DATABASE)
@dlq.command("show")
@click.argument("letter_id", type=ROW_ID)
@json_option
@run_async
async def dlq_show(letter_id: int, as_json: bool) -> None:
    """One dead letter in full (phones masked unless --json)."""
    letter = await with_db(lambda conn: _letter(conn, letter_id))
    if as_json:
        print_json(letter.to_json())
        return
    replayed = f"{letter.replayed_at:%Y-%m-%d %H:%M:%S}" if letter.replayed_at else "no"
    click.echo(f"letter {letter.id}: {letter.source} {letter.reason}, created "
               f"{letter.created_at:%Y-%m-%d %H:%M:%S} UTC, attempts {letter.attempts}, "
               f"replayed {replayed}")
    click.echo(mask_phone_numbers(f"error: {' '.join((letter.error or '-').split())}"))
    click.echo(f"key: {letter.letter_key}" + (f", call {letter.call}" if letter.call else ""))
    click.echo("payload (phones masked; --json shows them whole):")
    click.echo(json.dumps(mask_document(letter.payload), indent=2, sort_keys=True,
                          default=str, ensure_ascii=False))


@with_environment(DATABASE, *REDIS, "VOICEALERT_CALLS_PER_SECOND")
@dlq.command("replay")
@click.argument("letter_id", type=ROW_ID, required=False)
@click.option("--all", "replay_all", is_flag=True, help="Every letter not replayed yet.")
@run_async
async def dlq_replay(letter_id: int | None, replay_all: bool) -> None:
    """Replay a letter (or all): ingest letters go back on the stream, call letters are
    called again. A letter whose cause is not fixed is refused, and says why."""
    from worker.replay import ReplayRefused, replay

    if (letter_id is None) == (not replay_all):
        raise BadInput("give one letter ID or --all")
    settings = current_settings()
    redis_pool = open_redis(settings.redis_url, timeout_s=settings.redis_timeout_s)
    conn = await db.connect(settings.database_url, timeout_s=settings.database_timeout_s)
    refused = 0
    try:
        if replay_all:
            letters = await db.list_dead_letters(conn, include_replayed=False, limit=100_000)
        else:
            assert letter_id is not None
            letters = [await _letter(conn, letter_id)]
        for letter in letters:
            try:
                done = await replay(conn, redis_pool, settings, letter)
                click.echo(f"replayed {letter.id}: {done}")
            except ReplayRefused as exc:
                refused += 1
                click.echo(f"voicealert: not replayed: {mask_phone_numbers(str(exc))}", err=True)
        if replay_all:
            click.echo(f"{len(letters) - refused} replayed, {refused} refused")
    finally:
        await close_connection(conn, timeout_s=settings.database_timeout_s)
        await redis_pool.aclose()
    if refused:
        sys.exit(1)


@with_environment(DATABASE)
@dlq.command("purge")
@click.argument("letter_id", type=ROW_ID, required=False)
@click.option("--all", "purge_all", is_flag=True, help="Every letter (asks first).")
@click.option("--older-than", default=None, help="An age like 30d: letters older than it.")
@yes_option
@run_async
async def dlq_purge(letter_id: int | None, purge_all: bool, older_than: str | None,
                    yes: bool) -> None:
    """Delete a letter, all letters, or those older than an age."""
    if sum([letter_id is not None, purge_all, older_than is not None]) != 1:
        raise BadInput("give exactly one of: a letter ID, --all, --older-than AGE")
    cutoff = ago(older_than) if older_than else None
    if purge_all:
        count = await with_db(db.count_dead_letters)
        confirm(f"delete all {count} dead letters", yes)
    count = await with_db(lambda c: db.purge_dead_letters(c, letter_id=letter_id,
                                                          older_than=cutoff))
    if letter_id is not None and count == 0:
        raise BadInput(f"no dead letter {letter_id}")
    click.echo(f"purged {count} dead letter{'s' if count != 1 else ''}")
