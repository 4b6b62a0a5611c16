"""What `voicealert status` calls degraded, and how its screen says so (no I/O: snapshots
built by hand; the integration and e2e suites read real ones)."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime

import click

from worker.cli_status import render
from worker.config import Settings, load_settings
from worker.health import (
    RATE_DELAY_S,
    UNREAD_AGE_S,
    Consumer,
    DatabaseState,
    JobCounts,
    RateSchedule,
    Replica,
    ReplicaBeat,
    Snapshot,
    StreamState,
    assess,
)
from worker.models import LetterSummary

NOW = 1_800_000_000.0
SETTINGS: Settings = load_settings({})


def beat(consumer: str = "web-1-7", **changes: object) -> ReplicaBeat:
    base = ReplicaBeat(consumer=consumer, host="web-1", pid=7, at=NOW, started_at=NOW - 3600,
                       interval_s=10)
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def healthy() -> Snapshot:
    return Snapshot(
        at=datetime.now(UTC),
        stream=StreamState(length=12, memory_bytes=9000, group_exists=True, unread=0,
                           oldest_unread_age_s=None, pending=0,
                           consumers=[Consumer("web-1-7", 0, 0.4, alive=True)]),
        replicas=[Replica("web-1-7", beat(), 1.0)],
        jobs={"place_call": JobCounts(), "poll_call": JobCounts(), "cancel_call": JobCounts()},
        rate=RateSchedule(calls_per_second=1.0, free_in_s=0.0),
        database=DatabaseState(migrations_pending=[], migrations_error=None, calls_last_hour={},
                               alerts_last_hour={}, alerts_open={}, dead_letters=[],
                               stuck_calls=0),
    )


def with_problems(snapshot: Snapshot) -> Snapshot:
    return dataclasses.replace(snapshot, problems=assess(snapshot, SETTINGS))


def screen_of(snapshot: Snapshot) -> list[str]:
    """The screen as a pipe or a log file gets it (click.echo drops the colours)."""
    return [click.unstyle(line) for line in render(with_problems(snapshot))]


def lines_of(snapshot: Snapshot) -> list[str]:
    return [p.line for p in assess(snapshot, SETTINGS)]


def test_an_idle_system_with_a_live_replica_is_healthy() -> None:
    assert assess(healthy(), SETTINGS) == []


def test_no_live_replica_is_degraded_on_the_replicas_line() -> None:
    snapshot = dataclasses.replace(healthy(), replicas=[Replica("web-1-7", None, 45.0)])
    assert lines_of(snapshot) == ["replicas"]


def test_entries_pending_on_a_consumer_without_a_live_replica_name_it_and_its_idle_time() -> None:
    base = healthy()
    stream = dataclasses.replace(base.stream, pending=3, consumers=[
        Consumer("web-1-7", 0, 0.4, alive=True), Consumer("web-2-9", 3, 42.0, alive=False)])
    [problem] = assess(dataclasses.replace(base, stream=stream), SETTINGS)
    assert problem.line == "stream"
    assert "3 entries pending on web-2-9" in problem.message
    assert "idle 42s" in problem.message


def test_unread_events_older_than_the_threshold_are_degraded_younger_are_not() -> None:
    base = healthy()
    young = dataclasses.replace(base.stream, unread=5, oldest_unread_age_s=UNREAD_AGE_S - 1)
    old = dataclasses.replace(base.stream, unread=5, oldest_unread_age_s=UNREAD_AGE_S + 1)
    assert lines_of(dataclasses.replace(base, stream=young)) == []
    assert lines_of(dataclasses.replace(base, stream=old)) == ["stream"]


def test_a_call_schedule_booked_beyond_the_threshold_is_degraded_on_the_call_rate_line() -> None:
    base = healthy()
    backlog = dataclasses.replace(base, rate=RateSchedule(1.0, 20.0),
                                  jobs={**base.jobs, "place_call": JobCounts(deferred=20)})
    storm = dataclasses.replace(base, rate=RateSchedule(1.0, RATE_DELAY_S + 15),
                                jobs={**base.jobs, "place_call": JobCounts(deferred=75)})
    assert lines_of(backlog) == []
    [problem] = assess(storm, SETTINGS)
    assert problem.line == "call rate"
    assert "75 calls wait" in problem.message


def test_due_jobs_nobody_starts_are_degraded() -> None:
    base = healthy()
    stuck = {**base.jobs, "place_call": JobCounts(waiting=4, oldest_wait_s=30.0)}
    assert lines_of(dataclasses.replace(base, jobs=stuck)) == ["jobs"]


def test_recent_dead_letters_and_pending_migrations_are_degraded_old_letters_are_not() -> None:
    base = healthy()
    now = datetime.now(UTC)
    old = dataclasses.replace(base.database, dead_letters=[
        LetterSummary("ingest", "invalid_json", waiting=2, recent=0, newest=now)])
    new = dataclasses.replace(base.database, dead_letters=[
        LetterSummary("call", "provider_rejected", waiting=1, recent=1, newest=now)],
        migrations_pending=["0003_status_indexes"])
    assert lines_of(dataclasses.replace(base, database=old)) == []
    assert lines_of(dataclasses.replace(base, database=new)) == ["dead letters", "migrations"]


def test_the_screen_marks_the_degraded_line_and_says_why_in_the_headline() -> None:
    base = healthy()
    stream = dataclasses.replace(base.stream, pending=3, consumers=[
        Consumer("web-2-9", 3, 42.0, alive=False)])
    screen = screen_of(dataclasses.replace(
        base, stream=stream, replicas=[Replica("web-2-9", None, 42.0)]))
    assert screen[0].startswith("voicealert: DEGRADED (2 problems)")
    marked = [line.split()[1] for line in screen if line.startswith("! ")]
    assert marked == ["stream", "replicas"]
    assert any("web-2-9: DEAD, last beat 42s ago" in line for line in screen)
    assert any("web-2-9: 3 pending, idle 42s, NO LIVE REPLICA" in line for line in screen)


def test_the_screen_of_a_healthy_system_says_so_and_what_each_replica_does() -> None:
    base = healthy()
    busy = beat(running=("place_call:12", "place_call:9", "poll_call:4"))
    screen = screen_of(dataclasses.replace(base, replicas=[Replica("web-1-7", busy, 1.0)]))
    assert screen[0].startswith("voicealert: healthy")
    assert not any(line.startswith("! ") for line in screen)
    assert any("web-1-7: up 60m, 0 jobs done, place_call 9 12, poll_call 4" in line
               for line in screen)


def test_a_heartbeat_round_trips_and_anything_else_in_the_key_is_not_one() -> None:
    original = beat(draining=True, running=("place_call:3",), jobs_done=5)
    assert ReplicaBeat.from_json(original.to_json()) == original
    arq_string = "Nov-27 00:32:27 j_complete=3 j_failed=0 j_retried=1 j_ongoing=0 queued=0"
    for raw in (arq_string, "", "[]", '{"consumer": 1}', b"\xff\xfe", None, "{" * 100_000):
        assert ReplicaBeat.from_json(raw) is None
