"""voicealert's worker service: ingest, dedup, fan-out, calls, outcomes, dead letters, CLI.

Follow one event in this order: ``ingest`` (stream → validated events) → ``dedup`` →
``fanout`` (alert and call rows, jobs) → ``calls`` (``place_call``) → ``outcomes``
(``poll_call``, alert status, escalation). SQL lives in ``db``, Redis key names in ``keys``.
"""
