"""shared.asgi: the bearer-token check and the body limit that the generator's API, the web page and the v2
classifier runtime share, on a FastAPI app like theirs (a JSON body parsed by FastAPI, a raw body read by hand, a
WebSocket endpoint). A WebSocket handshake to a real server (uvicorn): tests/test_auth.py."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager

import pytest
from fastapi import FastAPI, Request, WebSocket, WebSocketDisconnect
from fastapi.testclient import TestClient
from pydantic import BaseModel

from shared.asgi import POLICY_VIOLATION, BearerAuth, BodyLimit
from shared.auth import Callers

TOKEN = "asgi-test-token-0123456789abcdefghij"
LIMIT = 1000
STARTED: list[str] = []  # the app's lifespan ran: BearerAuth let it through


class Body(BaseModel):
    text: str


@pytest.fixture(scope="module")
def client() -> Iterator[TestClient]:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        STARTED.append("started")
        yield

    app = FastAPI(lifespan=lifespan)
    app.add_middleware(BodyLimit, limit=LIMIT, answer=lambda limit: {"error": f"over {limit}"})
    app.add_middleware(BearerAuth, callers=Callers({"tester": TOKEN}), is_open={"/healthz"}.__contains__)

    @app.post("/json")
    def parsed(body: Body) -> dict[str, int]:
        return {"length": len(body.text)}

    @app.post("/raw")
    async def raw(request: Request) -> dict[str, int]:
        return {"length": len(await request.body())}

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "serving"}

    @app.websocket("/ws")
    @app.websocket("/healthz")  # an open path for HTTP is not one for WebSockets
    async def echo(websocket: WebSocket) -> None:
        await websocket.accept()
        await websocket.send_text("echo: " + await websocket.receive_text())
        await websocket.close()

    with TestClient(app) as test_client:
        yield test_client


def auth(token: str = TOKEN) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}


def test_a_token_is_needed_except_on_open_paths(client: TestClient) -> None:
    assert client.get("/healthz").status_code == 200
    for headers in ({"Content-Type": "application/json"}, auth("w" * 40)):
        refused = client.post("/json", content=b'{"text": "x"}', headers=headers)
        assert refused.status_code == 401 and refused.headers["WWW-Authenticate"] == "Bearer"
        assert set(refused.json()) == {"detail"}  # FastAPI's error body by default
    assert client.post("/json", content=b'{"text": "xy"}', headers=auth()).json() == {"length": 2}


@pytest.mark.parametrize("path", ["/json", "/raw"])
def test_an_oversized_body_is_413_by_its_length_or_as_it_streams(client: TestClient, path: str) -> None:
    """Also when FastAPI parses the body itself (it turns any error while reading into its own 400)."""
    oversized = b'{"text": "' + b"x" * LIMIT + b'"}'
    declared = client.post(path, content=oversized, headers=auth())
    assert (declared.status_code, declared.json()) == (413, {"error": f"over {LIMIT}"})
    chunks = (oversized[i : i + 100] for i in range(0, len(oversized), 100))  # no Content-Length: chunked
    streamed = client.post(path, content=chunks, headers=auth())
    assert (streamed.status_code, streamed.json()) == (413, {"error": f"over {LIMIT}"})
    fits = client.post(path, content=b'{"text": "' + b"x" * 100 + b'"}', headers=auth())
    assert fits.status_code == 200


def test_a_websocket_needs_a_token_on_every_path_and_the_lifespan_passes(client: TestClient) -> None:
    """Without an accepted token the handshake is refused with 401 before the app sees the connection (the
    finding: BearerAuth let every non-HTTP connection through); with one, the app answers."""
    assert STARTED == ["started"]  # the lifespan startup reached the app
    for path in ("/ws", "/healthz"):
        for headers in ({}, {"Authorization": "Bearer " + "w" * 40}, {"Authorization": TOKEN}):
            # the TestClient's WebSocketDenialResponse: a WebSocketDisconnect that is also the HTTP answer
            with pytest.raises(WebSocketDisconnect) as refused, client.websocket_connect(path, headers=headers):
                pass
            assert refused.value.status_code == 401 and refused.value.headers["www-authenticate"] == "Bearer"
            assert refused.value.json()["detail"] in (
                "missing credential: send 'authorization: Bearer <token>'",
                "invalid credential",
            )
    with client.websocket_connect("/ws", headers={"Authorization": f"Bearer {TOKEN}"}) as websocket:
        websocket.send_text("hello")
        assert websocket.receive_text() == "echo: hello"


def test_a_server_without_the_denial_response_extension_gets_a_close_1008() -> None:
    """The plain ASGI answer where a server cannot send a 401 at the handshake: websocket.close with 1008, before
    anything reaches the app; an unknown kind of connection is dropped."""
    reached: list[dict] = []
    sent: list[dict] = []

    async def app(scope: dict, receive: object, send: object) -> None:
        reached.append(scope)

    async def receive() -> dict:
        return {"type": "websocket.connect"}

    async def send(message: dict) -> None:
        sent.append(message)

    auth = BearerAuth(app, Callers({"tester": TOKEN}), is_open=lambda path: True)
    asyncio.run(auth({"type": "websocket", "path": "/ws", "headers": [], "extensions": {}}, receive, send))
    assert sent == [{"type": "websocket.close", "code": POLICY_VIOLATION}] and not reached
    asyncio.run(auth({"type": "other"}, receive, send))
    assert sent == [{"type": "websocket.close", "code": POLICY_VIOLATION}] and not reached
