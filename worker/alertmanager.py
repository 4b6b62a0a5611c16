"""Alertmanager's webhook payload (version 4; Grafana's compatible one too) as alert events.

One event per alert of the payload:

- ``alert_id`` is the alert's ``fingerprint``. When a sender leaves it out, it is computed
  from the labels the way Alertmanager computes it (FNV-1a 64 over the sorted labels), so
  the same alert gets the same id from either.
- A ``firing`` alert is a trigger of the ``group`` named in the URL; its message is the
  ``summary`` annotation, else ``description``, else ``message``, else the ``alertname``
  label with a few identifying labels ("HighLatency: instance db-1, severity critical").
- A ``resolved`` alert is a resolve of that alert_id.
- ``event_id`` is ``am:<fingerprint>:<startsAt>:<status>``: Alertmanager re-sends every
  alert of a group whenever the group changes and every ``repeat_interval``; the same firing
  (same ``startsAt``) is then the same event, and rings nobody again. A new firing of the
  alert after it resolved has a new ``startsAt``, so it rings.
- ``metadata`` keeps the labels, annotations, ``startsAt`` and ``generatorURL``, reduced
  to what fits the event's 4096-byte limit.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from schema import METADATA_MAX_BYTES, strip_control_characters
from worker.api_models import AlertmanagerAlert

_FNV_OFFSET = 14695981039346656037
_FNV_PRIME = 1099511628211
_SEPARATOR = 0xFF
_MESSAGE_ANNOTATIONS = ("summary", "description", "message")
_IDENTIFYING_LABELS = ("instance", "job", "service", "namespace", "severity")
_MESSAGE_MAX = 1000
_EVENT_ID_MAX = 200


def fingerprint(labels: dict[str, str]) -> str:
    """Alertmanager's fingerprint of a label set (prometheus/common labelSetToFingerprint)."""
    value = _FNV_OFFSET
    for name in sorted(labels):
        for part in (name, labels[name]):
            for byte in [*part.encode(), _SEPARATOR]:
                value = ((value ^ byte) * _FNV_PRIME) & 0xFFFFFFFFFFFFFFFF
    return f"{value:016x}"


def _spoken(text: str) -> str:
    return " ".join(strip_control_characters(text).split())


def message_of(alert: AlertmanagerAlert) -> str:
    for key in _MESSAGE_ANNOTATIONS:
        text = _spoken(alert.annotations.get(key, ""))
        if text:
            return text[:_MESSAGE_MAX]
    name = _spoken(alert.labels.get("alertname", "")) or "Alertmanager alert"
    details = [f"{key} {_spoken(alert.labels[key])}" for key in _IDENTIFYING_LABELS
               if _spoken(alert.labels.get(key, ""))]
    return (f"{name}: {', '.join(details)}" if details else name)[:_MESSAGE_MAX]


def _metadata(alert: AlertmanagerAlert) -> dict[str, Any]:
    full: dict[str, Any] = {"source": "alertmanager", "labels": alert.labels,
                            "annotations": alert.annotations, "starts_at": alert.startsAt,
                            "generator_url": alert.generatorURL}
    for keys in (("labels", "annotations", "starts_at", "generator_url"),
                 ("labels", "starts_at"), ("starts_at",)):
        candidate = {"source": "alertmanager", **{k: full[k] for k in keys if full[k]}}
        if _fits(candidate):
            return candidate
    return {"source": "alertmanager"}


def _fits(metadata: dict[str, Any]) -> bool:
    text = json.dumps(metadata, separators=(",", ":"), ensure_ascii=False)
    return len(text.encode()) <= METADATA_MAX_BYTES and "\\u0000" not in text


def event_fields(alert: AlertmanagerAlert, *, group: str | None,
                 mode: str | None) -> dict[str, Any]:
    """The event fields (not validated yet) for one alert of the payload."""
    alert_id = alert.fingerprint or fingerprint(alert.labels)
    event_id = f"am:{alert_id}:{alert.startsAt or ''}:{alert.status}"
    if len(event_id) > _EVENT_ID_MAX:  # a sender's odd fingerprint or time: keep it unique
        event_id = "am:" + hashlib.sha256(event_id.encode()).hexdigest()
    if alert.status == "resolved":
        return {"alert_id": alert_id, "action": "resolve", "event_id": event_id}
    fields: dict[str, Any] = {"alert_id": alert_id, "action": "trigger", "group": group,
                              "message": message_of(alert), "event_id": event_id,
                              "metadata": _metadata(alert)}
    if mode is not None:
        fields["mode"] = mode
    return fields
