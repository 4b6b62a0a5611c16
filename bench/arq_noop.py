"""The baseline for call jobs: a plain arq worker running no-op jobs (``python -m
bench.arq_noop QUEUE``, REDIS_URL from the environment).

arq's defaults except what voicealert's worker also sets: 50 jobs at once, a 0.05 s poll, no
results kept, the JSON job serializer. Its health key is ``QUEUE:health-check``.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from arq import Worker
from arq.connections import RedisSettings
from arq.worker import func

from worker.queue import json_deserializer, json_serializer

NOOP = "noop"
MAX_JOBS = 50
POLL_DELAY_S = 0.05


async def noop(ctx: dict[Any, Any], *args: Any) -> None:
    return None


def main(queue: str) -> None:
    worker = Worker(
        functions=[func(noop, name=NOOP)],
        queue_name=queue,
        redis_settings=RedisSettings.from_dsn(os.environ["REDIS_URL"]),
        max_jobs=MAX_JOBS,
        poll_delay=POLL_DELAY_S,
        keep_result=0,
        job_serializer=json_serializer,
        job_deserializer=json_deserializer,
        health_check_interval=3600,
    )
    worker.run()


if __name__ == "__main__":
    main(sys.argv[1])
