"""The demo behind ``scripts/demo``: two alerts through the whole pipeline, on embedded
defaults (the simulated provider; no web process needed: the simulated provider reports a
pressed key to the worker's poll, as Twilio posts it to the web process).

Runs ``voicealert`` exactly as an operator would: migrate, set two groups, start a worker
process, fire the events, show them on the stream, wait for every call to end, print the
calls, stop the worker with SIGTERM.

- ``demo-oncall``, parallel: Alice answers and presses 1; the calls to Bob and Carol are hung
  up, or canceled before they are placed, whichever the call rate makes them. The alert is
  acknowledged by Alice.
- ``demo-sequential``: an answering machine picks up Dave's phone. It is not an answer: the
  machine is hung up on and Erin is called; she presses 1.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import redis

from worker.models import TERMINAL_CALL_STATUSES

REPO = Path(__file__).resolve().parent.parent
VOICEALERT = [sys.executable, "-m", "worker"]
PARALLEL = ("demo-oncall", ["Alice=+14155550100", "Bob=+14155550101", "Carol=+14155550102"])
SEQUENTIAL = ("demo-sequential", ["Dave=+14155550103", "Erin=+14155550104"])
OUTCOMES = ("+14155550100=press-1,+14155550101=no-answer,+14155550103=machine,"
            "+14155550104=press-1,*=completed")


def run(*args: str, ok: tuple[int, ...] = (0,)) -> str:
    print(f"$ voicealert {' '.join(args)}", flush=True)
    result = subprocess.run([*VOICEALERT, *args], capture_output=True, text=True, check=False)
    sys.stdout.write(result.stdout)
    if result.returncode not in ok:
        sys.stderr.write(result.stderr)
        raise SystemExit(f"demo: `voicealert {' '.join(args)}` exited {result.returncode}")
    return result.stdout


def wait_until_alive(worker: subprocess.Popen[bytes], log_path: Path) -> None:
    """Until the worker's heartbeat is up (`voicealert fire` refuses an event nobody reads)."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if worker.poll() is not None:
            raise SystemExit(f"demo: the worker exited with {worker.returncode}; see {log_path}")
        check = subprocess.run([*VOICEALERT, "worker", "--check"], capture_output=True,
                               check=False)
        if check.returncode == 0:
            return
        time.sleep(0.3)
    raise SystemExit(f"demo: the worker was not alive within 30 s; see {log_path}")


def calls_json(alert_id: str) -> list[dict[str, Any]]:
    out = subprocess.run([*VOICEALERT, "calls", "--alert-id", alert_id, "--json"],
                         capture_output=True, text=True, check=True).stdout
    rows: list[dict[str, Any]] = json.loads(out)
    return rows


def what_happened_to_the_others(alert_id: str) -> str:
    """Bob's and Carol's calls as they ended: placed and then hung up, or never placed (the
    call rate decides whether Alice's key comes before their turn)."""
    parts = []
    for call in calls_json(alert_id):
        if call["member_name"] == "Alice":
            continue
        how = ("was hung up" if call["attempts"] else "was canceled before it was placed")
        parts.append(f"{call['member_name']}'s call {how} ({call['status']})")
    return "; ".join(parts)


def show_entry(client: redis.Redis, prefix: str, entry_id: str) -> None:
    entries: list[tuple[bytes, dict[bytes, bytes]]] = client.xrange(  # type: ignore[assignment]
        f"{prefix}events", entry_id, entry_id
    )
    for sid, fields in entries:
        print(f"on the stream: {sid.decode()} event={fields[b'event'].decode()}")


def wait_until_ended(worker: subprocess.Popen[bytes], log_path: Path,
                     expected: dict[str, int]) -> None:
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if worker.poll() is not None:
            raise SystemExit(f"demo: the worker exited with {worker.returncode}; "
                             f"see {log_path}")
        done = True
        for alert_id, count in expected.items():
            rows = calls_json(alert_id)
            ended = [r for r in rows if r["status"] in TERMINAL_CALL_STATUSES]
            done = done and len(rows) == count and len(ended) == count
        if done:
            return
        time.sleep(0.5)
    raise SystemExit(f"demo: calls did not finish within 90 s; see {log_path}")


def main() -> int:
    env = dict(os.environ)
    env.setdefault("VOICEALERT_PROVIDER", "simulated")
    env.setdefault("VOICEALERT_SIMULATED_OUTCOMES", OUTCOMES)
    # Phones ring 3 s and calls last 1 s; one call every 5 s, so Bob's and Carol's phones
    # are still ringing (or not dialed yet) when Alice presses 1.
    env.setdefault("VOICEALERT_SIMULATED_RING_S", "3")
    env.setdefault("VOICEALERT_SIMULATED_TALK_S", "1")
    env.setdefault("VOICEALERT_CALLS_PER_SECOND", "0.2")
    env.setdefault("VOICEALERT_LOG_FORMAT", "console")
    os.environ.update(env)
    run("migrate")
    for name, members in (PARALLEL, SEQUENTIAL):
        run("groups", "set", name, *[a for m in members for a in ("--member", m)],
            "--rounds", "1")

    state = Path(os.environ.get("VOICEALERT_STATE_DIR", REPO / ".state"))
    state.mkdir(parents=True, exist_ok=True)
    log_path = state / "demo-worker.log"
    print(f"$ voicealert worker   (in the background; log: {log_path})", flush=True)
    with log_path.open("w") as log_file:
        worker = subprocess.Popen([*VOICEALERT, "worker"], stdout=log_file, stderr=log_file)
    try:
        wait_until_alive(worker, log_path)
        suffix = uuid.uuid4().hex[:8]
        parallel, sequential = f"demo-{suffix}", f"demo-seq-{suffix}"
        started = time.monotonic()
        client: redis.Redis = redis.Redis.from_url(os.environ["REDIS_URL"])
        prefix = os.environ.get("VOICEALERT_REDIS_PREFIX", "voicealert:")
        entry = run("fire", "--group", PARALLEL[0], "--alert-id", parallel,
                    "--message", "Demo: the primary database is down").strip()
        show_entry(client, prefix, entry)
        entry = run("fire", "--group", SEQUENTIAL[0], "--alert-id", sequential,
                    "--mode", "sequential", "--message", "Demo: the disk of db-2 is full"
                    ).strip()
        show_entry(client, prefix, entry)
        wait_until_ended(worker, log_path, {parallel: 3, sequential: 2})
        print(f"every call ended {time.monotonic() - started:.1f}s after the first event")
        print(f"\nAlice pressed 1: {what_happened_to_the_others(parallel)}")
        run("calls", "--alert-id", parallel)
        run("alerts", "show", parallel)
        print("\nA machine answered Dave's phone: not an answer, so Erin was called; she "
              "pressed 1")
        run("calls", "--alert-id", sequential)
        run("status", ok=(0, 1))  # 1: degraded, which the screen explains
    finally:
        worker.send_signal(signal.SIGTERM)
        code = worker.wait(timeout=60)
        print(f"worker stopped with SIGTERM, exit code {code}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
