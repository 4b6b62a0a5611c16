"""``python -m schema`` regenerates ``alert_event.schema.json`` from the model."""

import json

from schema import EVENT_SCHEMA_PATH
from schema.event import AlertEvent


def render_event_schema() -> str:
    document = AlertEvent.model_json_schema()
    document["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    document["$id"] = "https://voicealert.dev/schema/alert_event.schema.json"
    return json.dumps(document, indent=2, sort_keys=True) + "\n"


if __name__ == "__main__":
    EVENT_SCHEMA_PATH.write_text(render_event_schema())
    print(f"wrote {EVENT_SCHEMA_PATH}")
