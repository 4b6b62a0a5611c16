"""The contracts: the alert event model, alert groups and their members, migrations and the
JSON Schema."""

from pathlib import Path

from schema.event import (
    DEDUP_WINDOW_MAX_S,
    DEFAULT_DEDUP_WINDOW_S,
    DEFAULT_ROUND_DELAY_S,
    DEFAULT_ROUNDS,
    DEFAULT_TENANT,
    METADATA_MAX_BYTES,
    ROUND_DELAY_MAX_S,
    ROUNDS_MAX,
    AlertEvent,
    Member,
    describe_errors,
    normalize_phone,
    strip_control_characters,
    valid_phone,
)
from schema.group import MAX_GROUP_MEMBERS, GroupKey, GroupSpec, TenantScope, group_spec

SCHEMA_DIR = Path(__file__).resolve().parent
MIGRATIONS_DIR = SCHEMA_DIR / "migrations"
EVENT_SCHEMA_PATH = SCHEMA_DIR / "alert_event.schema.json"

__all__ = [
    "DEDUP_WINDOW_MAX_S",
    "DEFAULT_DEDUP_WINDOW_S",
    "DEFAULT_ROUNDS",
    "DEFAULT_ROUND_DELAY_S",
    "DEFAULT_TENANT",
    "EVENT_SCHEMA_PATH",
    "MAX_GROUP_MEMBERS",
    "METADATA_MAX_BYTES",
    "MIGRATIONS_DIR",
    "ROUNDS_MAX",
    "ROUND_DELAY_MAX_S",
    "SCHEMA_DIR",
    "AlertEvent",
    "GroupKey",
    "GroupSpec",
    "Member",
    "TenantScope",
    "describe_errors",
    "group_spec",
    "normalize_phone",
    "strip_control_characters",
    "valid_phone",
]
