"""Every benchmark of ``python -m bench`` runs end to end, at a tiny size, and prints each
figure beside the baseline measured in the same run. Nothing here is timed: the figures of a
tiny run mean nothing (docs/benchmarks.md has the real ones)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from bench.__main__ import BENCHMARKS, main
from bench.figures import SIZES
from tests.helpers import DATABASE_URL, TEST_REDIS_URL

pytestmark = pytest.mark.e2e

TINY = ["--size", "tiny", "--runs", "1", "--redis-url", TEST_REDIS_URL,
        "--database-url", DATABASE_URL]


def median_lines(output: str) -> dict[str, str]:
    """``label → rest of the line`` for each ``median:`` line printed."""
    lines = {}
    for line in output.splitlines():
        if line.strip().startswith("median: "):
            label, _, rest = line.strip().removeprefix("median: ").partition(": voicealert ")
            lines[label] = rest
    return lines


@pytest.mark.parametrize("name", list(BENCHMARKS))
def test_benchmark_runs_and_prints_each_figure_beside_its_baseline(
    name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([name, *TINY, "--no-write"]) == 0
    printed = median_lines(capsys.readouterr().out)
    figures = BENCHMARKS[name].figures(SIZES["tiny"])
    assert set(printed) == {f.label for f in figures}
    for figure in figures:
        line = printed[figure.label]
        assert figure.unit in line
        if figure.baseline is not None:
            assert f"| baseline ({figure.baseline}) " in line
            # then the ratio to the same run's baseline ("—" when the baseline is 0)
            assert re.search(r" \| (\d+\.\d\d×|—)( \||$)", line), line
        if figure.goal is not None:
            assert ": met" in line or ": missed" in line


def test_report_keeps_what_was_written_around_the_results(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    report = tmp_path / "benchmarks.md"
    report.write_text("# notes\n\nintro\n\n<!-- results: written by `python -m bench`; edit "
                      "outside these markers only -->\nold\n<!-- end of results -->\n\n"
                      "## What limits each figure\n\nthe profile says\n")
    assert main(["producer", *TINY, "--runs", "2", "--write", "--output", str(report)]) == 0
    text = report.read_text()
    assert text.startswith("# notes\n\nintro\n")
    assert text.endswith("## What limits each figure\n\nthe profile says\n")
    assert "\nold\n" not in text
    assert "| figure | voicealert | baseline, same run | ratio | goal | met |" in text
    assert "| figure | run 1 | run 2 |" in text
    assert "- Python 3." in text
    assert "; Redis " in text
    assert "; Postgres " in text


def test_unknown_benchmark_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["storms"])
    assert exit_info.value.code == 2
    assert "unknown benchmark 'storms'" in capsys.readouterr().err
