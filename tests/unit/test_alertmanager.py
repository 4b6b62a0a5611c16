"""Alertmanager alerts as events (worker/alertmanager.py): ids, messages, event ids, metadata."""

from __future__ import annotations

from typing import Any

from schema import METADATA_MAX_BYTES, AlertEvent
from worker.alertmanager import event_fields, fingerprint, message_of
from worker.api_models import AlertmanagerAlert


def alert(**fields: Any) -> AlertmanagerAlert:
    return AlertmanagerAlert.model_validate({"status": "firing", **fields})


def test_the_fingerprint_of_no_labels_is_the_fnv_offset_basis() -> None:
    # Alertmanager's fingerprint of an empty label set: FNV-1a 64's offset basis.
    assert fingerprint({}) == "cbf29ce484222325"


def test_the_fingerprint_ignores_label_order_and_separates_names_from_values() -> None:
    assert fingerprint({"a": "1", "b": "2"}) == fingerprint({"b": "2", "a": "1"})
    assert fingerprint({"a": "bc"}) != fingerprint({"ab": "c"})
    assert len(fingerprint({"alertname": "Down"})) == 16


def test_the_message_is_the_summary_then_the_description() -> None:
    assert message_of(alert(annotations={"summary": "Disk full", "description": "long"})) == (
        "Disk full")
    assert message_of(alert(annotations={"description": "Disk\tfull\non db-1"})) == (
        "Disk full on db-1")
    assert message_of(alert(annotations={"summary": " \x00 ", "description": "Fallback"})) == (
        "Fallback")


def test_without_annotations_the_message_is_the_alertname_and_identifying_labels() -> None:
    labels = {"alertname": "HighLatency", "instance": "api-1", "severity": "critical",
              "team": "payments"}
    assert message_of(alert(labels=labels)) == (
        "HighLatency: instance api-1, severity critical")
    assert message_of(alert()) == "Alertmanager alert"


def test_a_long_summary_is_cut_to_the_events_limit() -> None:
    assert len(message_of(alert(annotations={"summary": "x" * 5000}))) == 1000


def test_the_same_firing_is_the_same_event_and_a_new_firing_a_new_one() -> None:
    first = event_fields(alert(fingerprint="f1", startsAt="2024-05-01T03:00:00Z"),
                         group="oncall", mode=None)
    resent = event_fields(alert(fingerprint="f1", startsAt="2024-05-01T03:00:00Z",
                                annotations={"summary": "changed"}), group="oncall", mode=None)
    refired = event_fields(alert(fingerprint="f1", startsAt="2024-05-01T05:00:00Z"),
                           group="oncall", mode=None)
    assert first["event_id"] == resent["event_id"]
    assert first["event_id"] != refired["event_id"]


def test_a_resolved_alert_is_a_resolve_of_the_same_alert_id() -> None:
    fields = event_fields(alert(status="resolved", fingerprint="f1"), group="oncall", mode=None)
    event = AlertEvent.model_validate(fields)
    assert (event.action, event.alert_id) == ("resolve", "f1")


def test_metadata_is_reduced_to_what_fits_the_event() -> None:
    big = alert(labels={"alertname": "X"}, annotations={"description": "d" * 5000},
                startsAt="2024-05-01T03:00:00Z")
    fields = event_fields(big, group="oncall", mode="sequential")
    event = AlertEvent.model_validate(fields)  # valid: within 4096 bytes
    assert event.metadata == {"source": "alertmanager", "labels": {"alertname": "X"},
                              "starts_at": "2024-05-01T03:00:00Z"}
    assert event.mode == "sequential"
    huge = alert(labels={f"l{i}": "v" * 100 for i in range(60)})
    assert AlertEvent.model_validate(event_fields(huge, group="g", mode=None)).metadata == {
        "source": "alertmanager"}
    assert METADATA_MAX_BYTES == 4096


def test_an_odd_fingerprint_still_gives_a_valid_event_id() -> None:
    fields = event_fields(alert(fingerprint="f" * 200, startsAt="t" * 100), group="g", mode=None)
    assert len(fields["event_id"]) <= 200
    AlertEvent.model_validate(fields)
