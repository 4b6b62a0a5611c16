"""Figures, their goals, and the medians of several runs: the vocabulary of every benchmark.

A benchmark measures one or more figures per run, each beside the baseline measured in the
same run (the raw parts voicealert is built from). Goals come from issue 12.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from bench.common import Place


@dataclass(frozen=True)
class Sizes:
    """How big each benchmark is; ``full`` is what docs/benchmarks.md records."""

    storm_events: int = 50_000
    fanout_members: int = 1_000
    producer_events: int = 50_000
    producer_batch: int = 1_000
    latency_s: float = 10.0  # seconds of events at each rate
    rate_calls: int = 60  # calls at 10/s over two replicas
    rss_events: int = 100_000
    idle_s: float = 10.0
    scaleout_events: int = 50_000
    settle_s: float = 1.0  # a started worker idles this long before its idle figures

    @classmethod
    def named(cls, name: str) -> Sizes:
        return SIZES[name]


SIZES = {
    "full": Sizes(),
    "quick": Sizes(storm_events=5_000, fanout_members=200, producer_events=10_000,
                   latency_s=3.0, rate_calls=30, rss_events=10_000, idle_s=3.0,
                   scaleout_events=5_000),
    # Only proves each benchmark runs end to end (the test suite uses it): no figure of it
    # means anything.
    "tiny": Sizes(storm_events=200, fanout_members=10, producer_events=200, producer_batch=50,
                  latency_s=0.3, rate_calls=4, rss_events=200, idle_s=0.3,
                  scaleout_events=200, settle_s=0.1),
}


@dataclass(frozen=True)
class Goal:
    """A bound on a figure's ratio to its baseline, or on the figure itself."""

    bound: float
    on: Literal["ratio", "value"] = "ratio"
    at_most: bool = False

    def met(self, value: float, ratio: float | None) -> bool:
        subject = ratio if self.on == "ratio" else value
        if subject is None:
            return False
        return subject <= self.bound if self.at_most else subject >= self.bound

    def describe(self, unit: str) -> str:
        sign = "≤" if self.at_most else "≥"
        if self.on == "ratio":
            return f"{sign} {self.bound:g}×"
        return f"{sign} {format_value(self.bound, unit)}"


@dataclass(frozen=True)
class Figure:
    key: str
    label: str  # what is measured, with its size
    unit: str  # "ev/s", "calls/s", "ms", "MiB", "% of a core", "calls"
    baseline: str | None  # what the baseline is, or None when there is none
    goal: Goal | None


@dataclass(frozen=True)
class Sample:
    """One run's figure and its baseline from the same run."""

    value: float
    baseline: float | None = None

    @property
    def ratio(self) -> float | None:
        if self.baseline is None or self.baseline == 0:
            return None
        return self.value / self.baseline


Run = Callable[[Place, Sizes], dict[str, Sample]]


@dataclass(frozen=True)
class Benchmark:
    name: str
    summary: str
    figures: Callable[[Sizes], list[Figure]]
    run: Run


@dataclass
class Result:
    """Every run of one figure, and their medians."""

    figure: Figure
    samples: list[Sample] = field(default_factory=list)

    @property
    def value(self) -> float:
        return statistics.median(s.value for s in self.samples)

    @property
    def baseline(self) -> float | None:
        values = [s.baseline for s in self.samples if s.baseline is not None]
        return statistics.median(values) if values else None

    @property
    def ratio(self) -> float | None:
        """The median of the per-run ratios: each run is compared with its own baseline."""
        values = [r for s in self.samples if (r := s.ratio) is not None]
        return statistics.median(values) if values else None

    @property
    def met(self) -> bool | None:
        goal = self.figure.goal
        if goal is None or not self.samples:
            return None
        return goal.met(self.value, self.ratio)


def format_value(value: float, unit: str) -> str:
    whole = unit in ("MiB", "calls") or (unit in ("ev/s", "calls/s") and value >= 100)
    return f"{value:,.0f} {unit}" if whole else f"{value:,.1f} {unit}"


def format_ratio(ratio: float | None) -> str:
    return "—" if ratio is None else f"{ratio:.2f}×"


def verdict(met: bool | None) -> str:
    return {True: "met", False: "missed", None: "—"}[met]


def describe_sample(figure: Figure, sample: Sample) -> str:
    text = f"voicealert {format_value(sample.value, figure.unit)}"
    if figure.baseline is not None and sample.baseline is not None:
        text += (f" | baseline ({figure.baseline}) {format_value(sample.baseline, figure.unit)}"
                 f" | {format_ratio(sample.ratio)}")
    return text


def describe_result(result: Result) -> str:
    figure = result.figure
    text = describe_sample(figure, Sample(result.value, result.baseline))
    if figure.baseline is not None and result.ratio is not None:
        # the ratio shown is the median of per-run ratios, not the ratio of the medians
        text = text.rsplit(" | ", 1)[0] + f" | {format_ratio(result.ratio)}"
    if figure.goal is not None:
        text += f" | goal {figure.goal.describe(figure.unit)}: {verdict(result.met)}"
    return text
