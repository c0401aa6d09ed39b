"""ASGI middleware our HTTP APIs share (the generator's API, the web page, the v2 classifier runtime): the bearer-token
check and the request-body limit, each answering before the app reads a byte of the body. The token check covers
WebSocket connections too (refused at the handshake without a token); only the server's lifespan events pass
unchecked.

    app.add_middleware(BodyLimit, limit=64 * 1024, answer=lambda limit: {"detail": f"over {limit} bytes"})
    app.add_middleware(BearerAuth, callers=callers, is_open=lambda path: path == "/healthz")  # added last: runs first

Plain ASGI (no Starlette import), so that any server's app takes them. Each service keeps its own error body: the
`answer` callables give the JSON of a refusal.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from shared.auth import Callers, refusal_reason

log = logging.getLogger(__name__)

UNAUTHORIZED = 401
REQUEST_TOO_LARGE = 413
POLICY_VIOLATION = 1008  # the WebSocket close code of a refused handshake, where the server cannot send a 401

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def json_answer(
    content: dict[str, Any], headers: dict[str, str] | None = None
) -> tuple[list[tuple[bytes, bytes]], bytes]:
    """(ASGI header fields, body) of a JSON answer."""
    body = json.dumps(content).encode()
    fields = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    fields += [(name.lower().encode(), value.encode()) for name, value in (headers or {}).items()]
    return fields, body


async def send_json(send: Send, status: int, content: dict[str, Any], headers: dict[str, str] | None = None) -> None:
    """A whole JSON answer over ASGI (before the app has sent anything)."""
    fields, body = json_answer(content, headers)
    await send({"type": "http.response.start", "status": status, "headers": fields})
    await send({"type": "http.response.body", "body": body})


async def refuse_websocket(
    scope: Scope, receive: Receive, send: Send, content: dict[str, Any], headers: dict[str, str]
) -> None:
    """Refuse a WebSocket handshake: the JSON answer with 401 where the server can send one (the ASGI extension
    websocket.http.response: uvicorn, Starlette's TestClient), else a close with 1008 before it is accepted (the
    server answers the handshake with 403). Nothing reaches the app."""
    if (await receive())["type"] != "websocket.connect":
        return  # the client left first
    if "websocket.http.response" in (scope.get("extensions") or {}):
        fields, body = json_answer(content, headers)
        await send({"type": "websocket.http.response.start", "status": UNAUTHORIZED, "headers": fields})
        await send({"type": "websocket.http.response.body", "body": body})
    else:
        await send({"type": "websocket.close", "code": POLICY_VIOLATION})


def detail(reason: str) -> dict[str, Any]:
    """FastAPI's error body: {"detail": reason}."""
    return {"detail": reason}


class BearerAuth:
    """401 (WWW-Authenticate: Bearer) for a request without a token of `callers`, before its body is read; the paths
    `is_open` accepts (probes, static pages) need none. A WebSocket connection needs a token on every path, or its
    handshake is refused (refuse_websocket); the lifespan events pass; any other kind of connection is dropped.
    `answer(reason)` is the refusal's JSON."""

    def __init__(
        self,
        app: ASGIApp,
        callers: Callers,
        is_open: Callable[[str], bool],
        answer: Callable[[str], dict[str, Any]] = detail,
    ) -> None:
        self.app, self.callers, self.is_open, self.answer = app, callers, is_open, answer

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "lifespan" or (kind == "http" and self.is_open(scope["path"])):
            await self.app(scope, receive, send)
            return
        if kind not in ("http", "websocket"):
            log.warning("refused an ASGI connection of an unknown type: %s", kind)
            return
        header = dict(scope["headers"]).get(b"authorization")
        authorization = None if header is None else header.decode("latin-1")
        if self.callers.identify(authorization) is not None:
            await self.app(scope, receive, send)
            return
        reason = refusal_reason(authorization)
        log.warning("refused an unauthenticated %s request: %s", kind, reason, extra={"path": scope["path"]})
        headers = {"WWW-Authenticate": "Bearer"}
        if kind == "websocket":
            await refuse_websocket(scope, receive, send, self.answer(reason), headers)
        else:
            await send_json(send, UNAUTHORIZED, self.answer(reason), headers)


class BodyLimit:
    """413 for a request body over `limit` bytes: by its Content-Length before anything is read, or as soon as the
    bytes received pass it (a body sent without a length): then the 413 goes out at once, the app reads a client
    disconnect, and whatever it answers or raises after that is dropped (FastAPI would turn any error while parsing
    a body into its own 400). `answer(limit)` is the refusal's JSON."""

    def __init__(
        self,
        app: ASGIApp,
        limit: int,
        answer: Callable[[int], dict[str, Any]] = lambda limit: detail(f"request body larger than {limit} bytes"),
    ) -> None:
        self.app, self.limit, self.answer = app, limit, answer

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            await send_json(send, REQUEST_TOO_LARGE, self.answer(self.limit))
            return
        received, started, refused = 0, False, False

        async def counted() -> Message:
            nonlocal received, refused
            if refused:
                return {"type": "http.disconnect"}
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.limit:
                refused = True
                if not started:
                    await send_json(send, REQUEST_TOO_LARGE, self.answer(self.limit))
                return {"type": "http.disconnect"}
            return message

        async def guarded(message: Message) -> None:
            nonlocal started
            if not refused:
                started = True
                await send(message)

        try:
            await self.app(scope, counted, guarded)
        except Exception:
            if not refused:
                raise
            log.info("refused a request body over %d bytes while it was read", self.limit)
