"""A flood of malformed stream entries under a supervised worker (issue 7, item 1).

10,000 malformed entries of many kinds (bad JSON, wrong types, deep nesting, huge numbers,
NUL, invalid UTF-8, lone surrogates, unknown fields, 5 KB metadata, huge ids, and the poison
entries that once crash-looped every replica) with 20 good events among them, written while
one worker runs under a supervisor that restarts it whenever it exits. Measured: process
exits, entries lettered, good events rung, time to drain the stream. Baseline from the same
run: the same flood against the worker of another checkout (``--baseline-repo``, e.g. an
export of main before issue 7).

    .venv/bin/python -m bench.poison [--baseline-repo /tmp/va-before] [--limit-s 150]
"""

from __future__ import annotations

import argparse
import asyncio
import time
from dataclasses import dataclass
from pathlib import Path

import redis.asyncio

from bench.common import REPO
from bench.supervised import Supervisor, repo_label, scratch, seed_group
from testing.fake_twilio import FakeTwilio
from testing.poison import Fields, good_event, malformed_entries
from worker import db

FLOOD = 10_000
GOOD = 20
PHONE = "+14155550100"


@dataclass(frozen=True)
class Figures:
    exits: int
    lettered: int
    rung: int
    drained_s: float | None


def flood() -> tuple[list[Fields], set[int]]:
    entries: list[Fields] = []
    good: set[int] = set()
    every = FLOOD // GOOD
    for i, fields in enumerate(malformed_entries(FLOOD)):
        if i % every == every // 2:
            good.add(len(entries))
            entries.append(good_event(f"good-{i // every}"))
        entries.append(fields)
    return entries, good


async def backlog(client: redis.asyncio.Redis, stream: str) -> int:
    try:
        groups = await client.xinfo_groups(stream)
    except redis.exceptions.ResponseError:
        return -1
    if not groups:
        return -1
    return int(groups[0].get("lag") or 0) + int(groups[0].get("pending") or 0)


async def run(repo: Path, limit_s: float) -> Figures:
    entries, good = flood()
    async with scratch(repo) as where:
        conn = await db.connect(where.database_url)
        await seed_group(conn, "oncall", [PHONE])
        client = redis.asyncio.Redis.from_url(where.redis_url)
        stream = f"{where.prefix}events"
        with FakeTwilio() as fake:
            async with Supervisor(repo, where.env(fake)) as supervisor:
                started = time.monotonic()
                ids: list[str] = []
                for start in range(0, len(entries), 500):
                    async with client.pipeline(transaction=False) as pipe:
                        for fields in entries[start:start + 500]:
                            pipe.xadd(stream, fields)
                        ids += [i.decode() for i in await pipe.execute()]
                drained_s: float | None = None
                while time.monotonic() - started < limit_s:
                    if await backlog(client, stream) == 0:
                        drained_s = time.monotonic() - started
                        break
                    await asyncio.sleep(0.1)
                await asyncio.sleep(2.0)  # the good events' calls go out
                exits = len(supervisor.exits)
            bad_keys = [f"stream:{sid}" for n, sid in enumerate(ids) if n not in good]
            lettered = await conn.fetchval(
                "SELECT count(*) FROM dead_letters WHERE letter_key = ANY($1::text[])", bad_keys)
            rung = await conn.fetchval(
                "SELECT count(DISTINCT a.alert_id) FROM alerts a JOIN calls c ON c.alert = a.id"
                " WHERE c.provider_sid IS NOT NULL")
        await client.aclose()
        await conn.close()
    return Figures(exits, int(lettered), rung, drained_s)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--baseline-repo", type=Path, default=None)
    parser.add_argument("--limit-s", type=float, default=150.0)
    args = parser.parse_args()
    repos = [REPO] + ([args.baseline_repo] if args.baseline_repo else [])
    results = {repo_label(r): asyncio.run(run(r, args.limit_s)) for r in repos}
    print(f"flood: {FLOOD} malformed entries + {GOOD} good events, one supervised worker, "
          f"{args.limit_s:.0f} s limit")
    print(f"{'worker':<24} {'exits':>6} {'lettered':>10} {'rung':>6} {'drained in':>11}")
    for label, f in results.items():
        drained = f"{f.drained_s:.1f} s" if f.drained_s is not None else "no"
        print(f"{label:<24} {f.exits:>6} {f.lettered:>5}/{FLOOD} {f.rung:>3}/{GOOD} {drained:>11}")


if __name__ == "__main__":
    main()
