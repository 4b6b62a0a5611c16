"""Read a ``py-spy record --format raw`` file (``python -m bench --profile DIR``): which
functions the busy samples were in.

Each line of the file is one stack, root first, frames ``function (file:line)`` separated by
``;``, then the number of samples. py-spy leaves out idle samples (the event loop waiting), so
percentages are of the time the process was busy.

    .venv/bin/python -m bench.profile profiles/storm-1-0.txt [--top 25]
"""

from __future__ import annotations

import argparse
import re
from collections import Counter
from pathlib import Path

_FRAME = re.compile(r"^(?P<function>.*?) \((?P<file>[^()]*?)(?::\d+)?\)$")
_SITE = re.compile(r".*/site-packages/")


def _where(frame: str) -> str:
    """``function (file)`` without the line number, paths shortened."""
    match = _FRAME.match(frame.strip())
    if match is None:
        return frame.strip()
    path = _SITE.sub("", match["file"])
    path = re.sub(r".*/(worker|producers|schema|bench|testing)/", r"\1/", path)
    path = re.sub(r".*/lib/python3\.\d+/", "", path)
    return f"{match['function']} ({path})"


def read(path: Path) -> tuple[Counter[str], Counter[str], int]:
    """(inclusive samples per function, self samples per function, total samples)."""
    inclusive: Counter[str] = Counter()
    own: Counter[str] = Counter()
    total = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [_where(f) for f in stack.split(";") if f.strip()]
        if not frames:
            continue
        total += count
        own[frames[-1]] += count
        for name in set(frames):
            inclusive[name] += count
    return inclusive, own, total


def summarize(path: Path, top: int = 20) -> str:
    inclusive, own, total = read(path)
    if total == 0:
        return f"{path}: no samples"
    lines = [f"{total} busy samples; inclusive % (self %) of them:"]
    for name, count in inclusive.most_common(top):
        lines.append(f"  {count / total * 100:5.1f}%  ({own[name] / total * 100:4.1f}%)  {name}")
    lines.append("by self time:")
    for name, count in own.most_common(top // 2):
        lines.append(f"  {count / total * 100:5.1f}%  {name}")
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
