"""The web application in process: feature routes added by add_routes, errors always JSON."""

from __future__ import annotations

from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from worker.config import Settings
from worker.web import DB, REDIS, create_app


def add_routes(app: web.Application) -> None:
    """A feature module's routes, the way webhooks and the API add theirs."""

    async def broken(request: web.Request) -> web.Response:
        raise RuntimeError("bug with a secret +14155550100 in it")

    async def refused(request: web.Request) -> web.Response:
        raise web.HTTPBadRequest(text="missing field 'CallSid'")

    async def uses_resources(request: web.Request) -> web.Response:
        one = await request.app[DB].fetchval("SELECT 1")
        pong = await request.app[REDIS].ping()
        return web.json_response({"db": one, "redis": pong})

    app.router.add_get("/broken", broken)
    app.router.add_post("/refused", refused)
    app.router.add_get("/resources", uses_resources)


async def test_feature_routes_share_the_apps_redis_and_postgres(settings: Settings) -> None:
    async with TestClient(TestServer(create_app(settings, [add_routes]))) as client:
        response = await client.get("/resources")
        assert response.status == 200
        assert await response.json() == {"db": 1, "redis": True}


async def test_a_handler_that_raises_answers_500_json_without_a_traceback(
    settings: Settings,
) -> None:
    async with TestClient(TestServer(create_app(settings, [add_routes]))) as client:
        response = await client.get("/broken")
        assert response.status == 500
        assert response.content_type == "application/json"
        text = await response.text()
        assert "Traceback" not in text
        assert "secret" not in text
        assert await response.json() == {"error": "internal server error", "status": 500}


async def test_an_http_error_a_handler_raises_keeps_its_message_as_json(
    settings: Settings,
) -> None:
    async with TestClient(TestServer(create_app(settings, [add_routes]))) as client:
        response = await client.post("/refused")
        assert response.status == 400
        assert await response.json() == {"error": "missing field 'CallSid'", "status": 400}
