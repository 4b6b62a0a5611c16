"""bench/http_api.py runs (on a tiny size: the figures themselves come from a full run)."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.helpers import REPO


def test_the_http_api_benchmark_runs_and_reports_both_servers(
    database_url: str, redis_url: str
) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "bench.http_api", "--clients", "4", "--seconds", "0.5",
         "--database-url", database_url, "--redis-url", redis_url],
        cwd=REPO, env=os.environ.copy(), capture_output=True, text=True, timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    rows = {line[:34].strip(): line.split() for line in result.stdout.splitlines()[2:]}
    assert set(rows) == {"baseline: bare aiohttp + XADD", "voicealert web POST /v1/alerts",
                         "same, log level warning"}
    for fields in rows.values():
        requests_per_s, errors = float(fields[-5]), int(fields[-1])
        assert requests_per_s > 0
        assert errors == 0
