"""shared.asgi: the bearer-token check and the body limit that the generator's API, the web page and the v2
classifier runtime share, on a FastAPI app like theirs (a JSON body parsed by FastAPI, a raw body read by hand)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi import FastAPI, Request
from fastapi.testclient import TestClient
from pydantic import BaseModel

from shared.asgi import BearerAuth, BodyLimit
from shared.auth import Callers

TOKEN = "t" * 40
LIMIT = 1000


class Body(BaseModel):
    text: str


@pytest.fixture(scope="module")
def client() -> Iterator[TestClient]:
    app = FastAPI()
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
