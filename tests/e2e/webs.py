"""Real ``python -m worker web`` processes under test, and an HTTP client for them. The
``spawn_web`` fixture (tests/e2e/conftest.py) starts them; test modules import the types
from here.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from tests.helpers import json_lines


@dataclass(frozen=True)
class Answer:
    """One HTTP answer: status, JSON body (None when the body is not JSON), headers."""

    status: int
    body: Any
    headers: Mapping[str, str]
    content_type: str


@dataclass
class WebProc:
    popen: subprocess.Popen[bytes]
    base_url: str
    log_path: Path

    def log_text(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def log_events(self) -> list[dict[str, Any]]:
        """The process's JSON log lines (other lines are skipped)."""
        return json_lines(self.log_text())

    async def request(self, method: str, path: str, *, token: str | None = None,
                      json_body: Any = None, data: bytes | str | None = None,
                      headers: Mapping[str, str] | None = None) -> Answer:
        all_headers = dict(headers or {})
        if token is not None:
            all_headers["Authorization"] = f"Bearer {token}"
        async with aiohttp.ClientSession() as session, session.request(
            method, self.base_url + path, json=json_body, data=data, headers=all_headers,
            timeout=aiohttp.ClientTimeout(total=15),
        ) as response:
            raw = await response.read()
            try:
                body = json.loads(raw)
            except ValueError:
                body = None
            return Answer(response.status, body, dict(response.headers), response.content_type)

    async def get(self, path: str, method: str = "GET") -> tuple[int, Any, dict[str, str]]:
        answer = await self.request(method, path)
        assert answer.content_type == "application/json", answer
        return answer.status, answer.body, dict(answer.headers)

    async def up(self) -> WebProc:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.popen.poll() is not None:
                raise AssertionError(f"web exited {self.popen.returncode}:\n{self.log_text()}")
            try:
                await self.get("/healthz")
                return self
            except aiohttp.ClientConnectionError:
                await asyncio.sleep(0.05)
        raise AssertionError(f"web not up in 20s:\n{self.log_text()}")

    async def wait_exit(self, timeout: float) -> int | None:  # noqa: ASYNC109 - a deadline
        try:
            return await asyncio.to_thread(self.popen.wait, timeout)
        except subprocess.TimeoutExpired:
            return None

    def reap(self) -> None:
        if self.popen.poll() is None:
            self.popen.kill()
        self.popen.wait(10)


SpawnWeb = Callable[..., WebProc]
