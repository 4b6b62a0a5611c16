"""The latency baseline: the least a consumer can do between XADD and the provider's POST.

``python -m bench.raw_post STREAM BASE_URL`` (REDIS_URL, TWILIO_ACCOUNT_SID and
TWILIO_AUTH_TOKEN from the environment): XREADGROUP (blocking), one POST per entry to the
Calls resource of BASE_URL with the event's message, XACK. No validation, no database, no
job queue. Writes ``STREAM:ready`` once it is reading.
"""

from __future__ import annotations

import asyncio
import html
import json
import os
import sys

import aiohttp
import redis.asyncio
import redis.exceptions

GROUP = "raw"
TO = "+14152000000"
FROM = "+15005550006"


async def consume(stream: str, base_url: str) -> None:
    client = redis.asyncio.Redis.from_url(os.environ["REDIS_URL"])
    sid, token = os.environ["TWILIO_ACCOUNT_SID"], os.environ["TWILIO_AUTH_TOKEN"]
    url = f"{base_url}/2010-04-01/Accounts/{sid}/Calls.json"
    try:
        await client.xgroup_create(stream, GROUP, id="0", mkstream=True)
    except redis.exceptions.ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise
    async with aiohttp.ClientSession(auth=aiohttp.BasicAuth(sid, token)) as http:
        await client.set(f"{stream}:ready", 1)
        while True:
            response = await client.xreadgroup(GROUP, "raw", {stream: ">"}, count=100,
                                               block=1000)
            for _stream, entries in response or []:
                for entry_id, fields in entries:
                    message = json.loads(fields[b"event"])["message"]
                    twiml = f"<Response><Say>{html.escape(message)}</Say></Response>"
                    form = {"To": TO, "From": FROM, "Twiml": twiml}
                    async with http.post(url, data=form) as answer:
                        await answer.read()
                    await client.xack(stream, GROUP, entry_id)


if __name__ == "__main__":
    asyncio.run(consume(sys.argv[1], sys.argv[2]))
