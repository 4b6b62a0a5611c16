"""voicealert's worker service: ingest, dedup, fan-out, calls, outcomes, dead letters, CLI.

Follow one event in this order: ``entries`` (stream entry → validated event) → ``ingest``
(the consumer group) → ``dedup`` → ``fanout`` (alert and call rows, jobs) → ``calls``
(``place_call``) → ``outcomes`` (``poll_call``, alert status, escalation). SQL lives in
``db``, its rows and statuses in ``models``, Redis key names in ``keys``. The map, and which
module may import which: docs/architecture.md.
"""
