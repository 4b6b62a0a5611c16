"""What the web process's feature modules share with it: the typed application keys of its
long-lived resources, and the one shape of an error response.

A feature module (``worker/api.py``, ``worker/webhooks.py``) imports these from here, not
from ``worker.web``: ``web`` imports the feature modules to add their routes, so importing
``web`` back would be an import circle.
"""

from __future__ import annotations

from collections.abc import Mapping

import asyncpg
from aiohttp import web
from arq.connections import ArqRedis

from worker.config import Settings

SETTINGS = web.AppKey("settings", Settings)
REDIS = web.AppKey("redis", ArqRedis)
DB = web.AppKey("db", asyncpg.Pool)
#: Who a request acts as, for the access log (``tenant/token-name``); never a secret.
ACTOR = web.RequestKey("actor", str)
#: What a handler adds to its request's access-log line (e.g. the alert and stream ids it
#: wrote): one line per request, not one more per event.
LOG_FIELDS = web.RequestKey("log_fields", dict)


def error_response(
    status: int, message: str, headers: Mapping[str, str] | None = None
) -> web.Response:
    """The one shape of every error: ``{"error": message, "status": status}``."""
    return web.json_response({"error": message, "status": status}, status=status,
                             headers=headers)
