"""Read a ``py-spy record --format raw`` file (``python -m bench --profile DIR``): where the busy
samples of a worker were.

Each line of the file is one stack, root first, frames ``function (file:line)`` separated by
``;``, then the number of samples. py-spy leaves out idle samples (the event loop waiting), so
percentages are of the time the process was busy: running, or in a system call such as a
socket write (on a loaded machine, a write that wakes Redis or Postgres often loses the core
to it, and the wait shows there). A ``.gil.txt`` file holds only samples with the GIL held:
the process's own Python CPU. Stacks inside an import (start-up) are counted apart and left
out of the percentages.

Printed: voicealert's own functions by inclusive time, then the functions the samples were
in (self time), each with the voicealert function that called it.

    .venv/bin/python -m bench.profile profiles/storm-1-0.txt [--top 25]
"""

from __future__ import annotations

import argparse
import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

_FRAME = re.compile(r"^(?P<function>.*?) \((?P<file>[^()]*?)(?::\d+)?\)$")
_OURS = ("worker/", "schema/", "producers/")


def _where(frame: str) -> str:
    """``function (file)`` without the line number, paths shortened."""
    match = _FRAME.match(frame.strip())
    if match is None:
        return frame.strip()
    path = re.sub(r".*/site-packages/", "", match["file"])
    path = re.sub(r".*/(worker|producers|schema|bench|testing)/", r"\1/", path)
    path = re.sub(r".*/lib/python3\.\d+/", "", path)
    return f"{match['function']} ({path})"


# Libraries whose share of the samples is worth a line: "under a log call", "in redis-py"...
PACKAGES = ("structlog", "logging", "redis", "asyncpg", "pydantic", "json", "arq", "aiohttp",
            "twilio")


def _package(frame: str) -> str | None:
    match = re.search(r"\((\w+)[/.]", frame)
    return match[1] if match and match[1] in PACKAGES else None


def _ours(frame: str) -> bool:
    return any(f"({prefix}" in frame for prefix in _OURS)


@dataclass
class Profile:
    total: int = 0  # busy samples, start-up excluded
    start_up: int = 0
    inclusive: Counter[str] = field(default_factory=Counter)
    own: Counter[str] = field(default_factory=Counter)
    packages: Counter[str] = field(default_factory=Counter)  # samples with a frame in it
    # self function → the nearest voicealert frame above it → samples
    callers: defaultdict[str, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))


def read(path: Path) -> Profile:
    profile = Profile()
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [_where(f) for f in stack.split(";") if f.strip()]
        if not frames:
            continue
        if any(f.startswith("<module> ") and "__main__.py" not in f for f in frames):
            profile.start_up += count
            continue
        profile.total += count
        leaf = frames[-1]
        profile.own[leaf] += count
        for name in set(frames):
            profile.inclusive[name] += count
        for package in {_package(f) for f in frames} - {None}:
            profile.packages[str(package)] += count
        caller = next((f for f in reversed(frames[:-1]) if _ours(f)), "-")
        profile.callers[leaf][caller] += count
    return profile


def summarize(path: Path, top: int = 25) -> str:
    p = read(path)
    if p.total == 0:
        return f"{path}: no samples"

    def pct(count: int) -> str:
        return f"{count / p.total * 100:5.1f}%"

    lines = [f"{p.total} busy samples ({p.start_up} more in start-up imports, left out)",
             "inside each library (inclusive): " + ", ".join(
                 f"{name} {pct(count).strip()}" for name, count in p.packages.most_common()),
             "voicealert functions, inclusive:"]
    ours = [(name, count) for name, count in p.inclusive.most_common() if _ours(name)]
    lines += [f"  {pct(count)}  {name}" for name, count in ours[:top]]
    lines.append("where the samples were (self), and from which voicealert function:")
    for name, count in p.own.most_common(top):
        callers = ", ".join(f"{caller} {pct(n).strip()}"
                            for caller, n in p.callers[name].most_common(3))
        lines.append(f"  {pct(count)}  {name}  ← {callers}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("files", nargs="+", type=Path)
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args()
    for path in args.files:
        print(f"== {path}")
        print(summarize(path, args.top))


if __name__ == "__main__":
    main()
