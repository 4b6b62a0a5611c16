"""docs/benchmarks.md: the record of a full run (machine, versions, date, every run, medians,
goals). Only the part between the two markers is rewritten; what is written around it (what
limits each figure, from profiles) is kept.
"""

from __future__ import annotations

import asyncio
import datetime
import os
import platform
import subprocess
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path

import asyncpg
import redis

from bench.common import REPO, Place
from bench.figures import Result, format_ratio, format_value, verdict
from worker.migrate import maintenance_url

DEFAULT_OUTPUT = REPO / "docs" / "benchmarks.md"
BEGIN = "<!-- results: written by `python -m bench`; edit outside these markers only -->"
END = "<!-- end of results -->"
PACKAGES = ("arq", "redis", "hiredis", "asyncpg", "pydantic", "pydantic-core", "structlog",
            "twilio", "aiohttp")

SKELETON = f"""# voicealert benchmarks

`python -m bench` measures every figure of issue 12 beside a baseline from the same run and
rewrites the results below; `python -m bench NAME` runs one benchmark and only prints.
Benchmarks are not tests: CI times nothing (tests/e2e/test_benchmarks.py only checks that each
one runs, at a tiny size).

{BEGIN}
{END}

## What limits each figure

To be written from a profile (`python -m bench NAME --profile DIR`).
"""


def _first_line(path: str, prefix: str) -> str:
    try:
        for line in Path(path).read_text().splitlines():
            if line.startswith(prefix):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def _commit() -> str:
    try:
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, check=True,
                             capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=REPO, check=True, capture_output=True, text=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return f"{sha}{' (with uncommitted changes)' if dirty.strip() else ''}"


def server_versions(place: Place) -> tuple[str, str]:
    client = redis.Redis.from_url(place.redis_url)
    try:
        info: dict[str, object] = client.info("server")  # type: ignore[assignment]
        redis_version = str(info["redis_version"])
    finally:
        client.close()

    async def postgres() -> str:
        conn = await asyncpg.connect(maintenance_url(place.database_url)[0], timeout=10)
        try:
            return str(await conn.fetchval("SHOW server_version"))
        finally:
            await conn.close()

    return redis_version, asyncio.run(postgres())


def machine(place: Place) -> list[str]:
    redis_version, postgres_version = server_versions(place)
    memory_kib = int(_first_line("/proc/meminfo", "MemTotal").split()[0] or 0)
    return [
        f"- CPU: {_first_line('/proc/cpuinfo', 'model name')}, {os.cpu_count()} cores; "
        f"memory {memory_kib / 1024 / 1024:.1f} GiB; {platform.system()} {platform.release()}",
        f"- Python {platform.python_version()}; Redis {redis_version}; "
        f"Postgres {postgres_version} (both on loopback)",
        "- " + ", ".join(f"{p} {_version(p)}" for p in PACKAGES),
        f"- voicealert commit {_commit()}",
    ]


def _cell(value: float | None, unit: str) -> str:
    return "—" if value is None else format_value(value, unit)


def results_table(results: Sequence[Result]) -> list[str]:
    lines = [
        "| figure | voicealert | baseline, same run | ratio | goal | met |",
        "|---|---|---|---|---|---|",
    ]
    for r in results:
        f = r.figure
        baseline = "—" if f.baseline is None else f"{f.baseline}: {_cell(r.baseline, f.unit)}"
        goal = "—" if f.goal is None else f.goal.describe(f.unit)
        lines.append(f"| {f.label} | {_cell(r.value, f.unit)} | {baseline} | "
                     f"{format_ratio(r.ratio)} | {goal} | {verdict(r.met)} |")
    return lines


def runs_table(results: Sequence[Result]) -> list[str]:
    runs = max(len(r.samples) for r in results)
    head = " | ".join(f"run {i}" for i in range(1, runs + 1))
    lines = [f"| figure | {head} |", "|---|" + "---|" * runs]
    for r in results:
        cells = []
        for s in r.samples:
            cell = format_value(s.value, r.figure.unit)
            if s.baseline is not None:
                cell += f" / {format_value(s.baseline, r.figure.unit)} ({format_ratio(s.ratio)})"
            cells.append(cell)
        lines.append(f"| {r.figure.label} | {' | '.join(cells)} |")
    return lines


def render(results: dict[str, list[Result]], *, place: Place, sizes: str, runs: int,
           started: float, loads: Sequence[tuple[str, tuple[float, float, float]]]) -> str:
    everything = [r for rs in results.values() for r in rs]
    when = datetime.datetime.fromtimestamp(started, datetime.UTC)
    minutes = (datetime.datetime.now(datetime.UTC) - when).total_seconds() / 60
    load_text = "; ".join(f"{name} {one:.2f}/{five:.2f}" for name, (one, five, _) in loads)
    lines = [
        f"Run of {when:%Y-%m-%d %H:%M} UTC, size `{sizes}`, {runs} runs of each benchmark "
        f"(medians; the ratio is the median of each run's ratio to its own baseline), "
        f"{minutes:.0f} minutes in all.",
        "",
        *machine(place),
        f"- Load average (1 min/5 min) when each benchmark started: {load_text}. The machine "
        "is shared: other work running at the same time slows voicealert and its baselines "
        "alike, which is why each figure is compared with a baseline from the same run.",
        "",
        "### Medians",
        "",
        *results_table(everything),
        "",
        "### Every run (voicealert / baseline (ratio))",
        "",
        *runs_table(everything),
    ]
    return "\n".join(lines)


def write(output: Path, results: dict[str, list[Result]], *, place: Place, sizes: str,
          runs: int, started: float,
          loads: Sequence[tuple[str, tuple[float, float, float]]]) -> None:
    text = output.read_text() if output.exists() else SKELETON
    if BEGIN not in text or END not in text:
        text = SKELETON
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    body = render(results, place=place, sizes=sizes, runs=runs, started=started, loads=loads)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(f"{head}{BEGIN}\n{body}\n{END}{tail}")
