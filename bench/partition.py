"""Postgres partitioned for 30 s mid-fan-out, under supervised workers (issue 7, item 2).

Two workers reach a throwaway Postgres through a proxy that blackholes the traffic on demand
(testing/stall_proxy.py: connections hang, nothing is refused). A 16-member parallel alert
and a 3-member sequential alert (the first two do not answer) are fanning out when the
partition starts; one more event arrives during it. Measured: worker exits, members called
(and called twice), calls still not terminal a while after the partition heals, and how
long after it every call was terminal. Baseline from the same run: the same scenario against
the workers of another checkout (``--baseline-repo``).

    .venv/bin/python -m bench.partition [--baseline-repo /tmp/va-before] [--stall-s 30]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import redis.asyncio

from bench.common import REPO
from bench.supervised import Supervisor, repo_label, scratch, seed_group
from producers import AlertProducer
from scripts.services import ThrowawayPostgres
from testing.fake_twilio import FakeTwilio
from testing.stall_proxy import StallProxy
from worker import db

STORM = [f"+1415555{n:04d}" for n in range(100, 116)]
CHAIN = ["+14155550200", "+14155550201", "+14155550202"]
DURING = ["+14155550300"]
EXPECTED = Counter(STORM + CHAIN + DURING)
LOG_DIR = os.environ.get("BENCH_LOG_DIR")  # keep the workers' logs there, for a post-mortem


@dataclass(frozen=True)
class Figures:
    creates_at_heal: int
    exits: int
    called: int
    twice: int
    open_after: int
    recovery_s: float | None


async def run(repo: Path, stall_s: float, wait_s: float) -> Figures:
    root = Path(tempfile.mkdtemp(prefix="voicealert-bench-pg-"))
    server = ThrowawayPostgres(data_dir=root / "pg")
    try:
        await asyncio.to_thread(server.init)
        await asyncio.to_thread(server.start)
        return await _scenario(repo, server, stall_s, wait_s)
    finally:
        await asyncio.to_thread(server.stop, "immediate")
        shutil.rmtree(root, ignore_errors=True)


async def _scenario(repo: Path, server: ThrowawayPostgres, stall_s: float,
                    wait_s: float) -> Figures:
    async with scratch(repo, server.url_for("postgres")) as where:
        conn = await db.connect(where.database_url)
        for name, phones in (("storm", STORM), ("chain", CHAIN), ("during", DURING)):
            await seed_group(conn, name, phones)
        client = redis.asyncio.Redis.from_url(where.redis_url)
        producer = AlertProducer(client, prefix=where.prefix)
        with FakeTwilio() as fake, StallProxy("127.0.0.1", server.port) as proxy:
            fake.ring_s = 3.0
            fake.talk_s = 2.0
            for phone in CHAIN[:2]:
                fake.set_outcome(phone, "no-answer")
            through = where.database_url.replace(f":{server.port}/", f":{proxy.port}/")
            env = where.env(fake, DATABASE_URL=through, VOICEALERT_CALLS_PER_SECOND="2")
            log_dir = Path(LOG_DIR) / repo.name if LOG_DIR else None
            async with Supervisor(repo, env, count=2, log_dir=log_dir) as supervisor:
                await producer.fire(alert_id="storm", group="storm", message="m",
                                    dedup_window_s=0)
                await producer.fire(alert_id="chain", group="chain", message="m",
                                    dedup_window_s=0, mode="sequential")
                while len(fake.creates()) < 8:  # noqa: ASYNC110 - the fake has no event
                    await asyncio.sleep(0.05)
                proxy.stall()
                await producer.fire(alert_id="during", group="during", message="m",
                                    dedup_window_s=0)
                await asyncio.sleep(stall_s)
                creates_at_heal = len(fake.creates())
                proxy.heal()
                healed = time.monotonic()
                recovery_s: float | None = None
                while time.monotonic() - healed < wait_s:
                    ended = await conn.fetchval(
                        "SELECT count(*) FROM calls WHERE ended_at IS NOT NULL")
                    if ended == len(EXPECTED):
                        recovery_s = time.monotonic() - healed
                        break
                    await asyncio.sleep(0.25)
                exits = len(supervisor.exits)
            open_after = len(EXPECTED) - int(await conn.fetchval(
                "SELECT count(*) FROM calls WHERE ended_at IS NOT NULL"))
            per_phone = Counter(c.to for c in fake.created_calls())
        await client.aclose()
        await conn.close()
    return Figures(creates_at_heal, exits, len(set(per_phone) & set(EXPECTED)),
                   sum(n - 1 for n in per_phone.values() if n > 1), open_after, recovery_s)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--baseline-repo", type=Path, default=None)
    parser.add_argument("--stall-s", type=float, default=30.0)
    parser.add_argument("--wait-s", type=float, default=120.0,
                        help="how long after the partition to wait for every call to end")
    args = parser.parse_args()
    repos = [REPO] + ([args.baseline_repo] if args.baseline_repo else [])
    results = {repo_label(r): asyncio.run(run(r, args.stall_s, args.wait_s)) for r in repos}
    print(f"partition: Postgres blackholed {args.stall_s:.0f} s mid-fan-out, two supervised "
          f"workers, {len(EXPECTED)} members in 3 alerts")
    print(f"{'worker':<24} {'placed when healed':>18} {'exits':>6} {'called':>8} {'twice':>6} "
          f"{'open ' + str(round(args.wait_s)) + ' s after':>16} {'all ended after':>16}")
    for label, f in results.items():
        ended = f"{f.recovery_s:.1f} s" if f.recovery_s is not None else "no"
        print(f"{label:<24} {f.creates_at_heal:>18} {f.exits:>6} {f.called:>4}/{len(EXPECTED)} "
              f"{f.twice:>6} {f.open_after:>16} {ended:>16}")


if __name__ == "__main__":
    main()
