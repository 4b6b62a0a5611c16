"""``python -m bench [NAME ...]``: run the benchmarks, print each figure beside its baseline
from the same run, and (a full run of all of them) write docs/benchmarks.md.

    .venv/bin/python -m bench                    # everything, full size, 3 runs: ~10 minutes
    .venv/bin/python -m bench storm latency      # some of them (prints, writes nothing)
    .venv/bin/python -m bench --quick            # smaller sizes, for a look while working
    .venv/bin/python -m bench storm --profile profiles/   # py-spy on every worker process
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from bench import fanout, idle, latency, producer, rate, report, storm
from bench.common import PROFILER, Place, Profiler
from bench.figures import SIZES, Benchmark, Result, Sizes, describe_result, describe_sample
from bench.profile import summarize

BENCHMARKS: dict[str, Benchmark] = {
    b.name: b
    for b in (
        storm.STORM, fanout.BENCHMARK, producer.BENCHMARK, latency.BENCHMARK, rate.BENCHMARK,
        storm.RSS, idle.BENCHMARK, storm.SCALEOUT,
    )
}


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("names", nargs="*", metavar="NAME",
                        help=f"benchmarks to run (default: all): {', '.join(BENCHMARKS)}")
    parser.add_argument("--size", choices=sorted(SIZES), default="full",
                        help="full (what docs/benchmarks.md records), quick, or tiny "
                             "(proves it runs, measures nothing)")
    parser.add_argument("--quick", action="store_const", const="quick", dest="size",
                        help="same as --size quick")
    parser.add_argument("--runs", type=int, default=3, help="runs of each benchmark (median)")
    parser.add_argument("--output", type=Path, default=report.DEFAULT_OUTPUT,
                        help="where a full run of every benchmark writes its report")
    parser.add_argument("--write", action=argparse.BooleanOptionalAction, default=None,
                        help="write the report (default: only for a full-size run of all)")
    parser.add_argument("--profile", type=Path, metavar="DIR",
                        help="record every worker process with py-spy into DIR and print "
                             "the top functions")
    parser.add_argument("--redis-url", help="Redis to use (default: $REDIS_URL)")
    parser.add_argument("--database-url",
                        help="Postgres server to create the scratch database on "
                             "(default: $DATABASE_URL)")
    args = parser.parse_args(argv)
    unknown = [n for n in args.names if n not in BENCHMARKS]
    if unknown:
        parser.error(f"unknown benchmark {unknown[0]!r}; choose from {', '.join(BENCHMARKS)}")
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    return args


def run_benchmark(bench: Benchmark, place: Place, sizes: Sizes, runs: int) -> list[Result]:
    results = [Result(figure) for figure in bench.figures(sizes)]
    print(f"== {bench.name}: {bench.summary}", flush=True)
    for number in range(1, runs + 1):
        started = time.monotonic()
        samples = bench.run(place, sizes)
        for result in results:
            result.samples.append(samples[result.figure.key])
            print(f"  run {number}: {result.figure.label}: "
                  f"{describe_sample(result.figure, samples[result.figure.key])}", flush=True)
        print(f"  (run {number} took {time.monotonic() - started:.1f} s)", flush=True)
    for result in results:
        print(f"  median: {result.figure.label}: {describe_result(result)}", flush=True)
    return results


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    names = args.names or list(BENCHMARKS)
    sizes = Sizes.named(args.size)
    write = args.write if args.write is not None else (not args.names and args.size == "full")
    place = Place.for_this_process(args.redis_url, args.database_url)
    if args.profile is not None:
        PROFILER.append(Profiler(args.profile))
    started = time.time()
    results: dict[str, list[Result]] = {}
    loads: list[tuple[str, tuple[float, float, float]]] = []
    try:
        for name in names:
            loads.append((name, os.getloadavg()))
            results[name] = run_benchmark(BENCHMARKS[name], place, sizes, args.runs)
    finally:
        place.drop()
        PROFILER.clear()
    if args.profile is not None:
        for output in sorted(args.profile.glob("*.txt")):
            print(f"== profile {output.name}"
                  f" ({'GIL held: Python CPU' if output.name.endswith('.gil.txt') else 'busy'})")
            print(summarize(output))
    if write:
        report.write(args.output, results, place=place, sizes=args.size, runs=args.runs,
                     started=started, loads=loads)
        print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
