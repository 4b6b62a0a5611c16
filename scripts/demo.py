"""The demo behind ``scripts/demo``: one alert through the whole pipeline, on embedded defaults.

Runs ``voicealert`` exactly as an operator would: migrate, set a group, start a worker
process (simulated provider), fire an event, show it on the stream, wait for the calls to
end, print the calls table, stop the worker with SIGTERM.
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

import redis

from worker.models import TERMINAL_CALL_STATUSES

REPO = Path(__file__).resolve().parent.parent
VOICEALERT = [sys.executable, "-m", "worker"]
GROUP = "demo-oncall"
MEMBERS = ["Alice=+14155550100", "Bob=+14155550101", "Carol=+14155550102"]


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


def main() -> int:
    env = dict(os.environ)
    env.setdefault("VOICEALERT_PROVIDER", "simulated")
    env.setdefault("VOICEALERT_SIMULATED_OUTCOMES", "+14155550101=no-answer,*=completed")
    env.setdefault("VOICEALERT_LOG_FORMAT", "console")
    os.environ.update(env)
    run("migrate")
    run("groups", "set", GROUP, *[a for m in MEMBERS for a in ("--member", m)])

    state = Path(os.environ.get("VOICEALERT_STATE_DIR", REPO / ".state"))
    state.mkdir(parents=True, exist_ok=True)
    log_path = state / "demo-worker.log"
    print(f"$ voicealert worker   (in the background; log: {log_path})", flush=True)
    with log_path.open("w") as log_file:
        worker = subprocess.Popen([*VOICEALERT, "worker"], stdout=log_file, stderr=log_file)
    try:
        wait_until_alive(worker, log_path)
        alert_id = f"demo-{uuid.uuid4().hex[:8]}"
        started = time.monotonic()
        entry_id = run("fire", "--group", GROUP, "--alert-id", alert_id,
                       "--message", "Demo: the primary database is down").strip()
        client: redis.Redis = redis.Redis.from_url(os.environ["REDIS_URL"])
        prefix = os.environ.get("VOICEALERT_REDIS_PREFIX", "voicealert:")
        entries: list[tuple[bytes, dict[bytes, bytes]]] = client.xrange(  # type: ignore[assignment]
            f"{prefix}events", entry_id, entry_id
        )
        for sid, fields in entries:
            print(f"on the stream: {sid.decode()} event={fields[b'event'].decode()}")
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if worker.poll() is not None:
                raise SystemExit(f"demo: the worker exited with {worker.returncode}; "
                                 f"see {log_path}")
            out = subprocess.run([*VOICEALERT, "calls", "--alert-id", alert_id, "--json"],
                                 capture_output=True, text=True, check=True).stdout
            rows = json.loads(out)
            ended = [r for r in rows if r["status"] in TERMINAL_CALL_STATUSES]
            if len(rows) == len(MEMBERS) and len(ended) == len(rows):
                break
            time.sleep(0.5)
        else:
            raise SystemExit(f"demo: calls did not finish within 60 s; see {log_path}")
        print(f"all {len(rows)} calls ended {time.monotonic() - started:.1f}s after the event")
        run("calls", "--alert-id", alert_id)
        run("alerts", "show", alert_id)
        run("status", ok=(0, 1))  # 1: degraded, which the screen explains
    finally:
        worker.send_signal(signal.SIGTERM)
        code = worker.wait(timeout=60)
        print(f"worker stopped with SIGTERM, exit code {code}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
