"""The plumbing every pneumonia gRPC server shares: server, health, reflection, errors, deadlines, logs, shutdown.

    server = GrpcServer([Service(SERVICE_NAME, servicer, add_FooServicer_to_server)], "127.0.0.1:50052",
                        callers=AuthConfig.from_env().callers())   # bearer tokens (shared.auth); None: open
    server.start()
    wait_for_signal()        # SIGTERM or SIGINT
    server.stop(grace=30)    # health NOT_SERVING first, then RPCs in flight get `grace` seconds to finish

Servicer methods wear @rpc_method: each call gets a request id (the client's `x-request-id` metadata, else a new
one, sent back as initial metadata), one structured log line when it ends (rpc, request_id, code, duration_ms),
and our exceptions turned into status codes by `status_for`. Long work calls `ensure_active(context)` between
steps, so that it stops once the client has gone or the deadline has passed.
"""

from __future__ import annotations

import argparse
import functools
import inspect
import json
import logging
import signal
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from concurrent import futures
from datetime import UTC, datetime
from typing import IO, Any, NamedTuple, NoReturn, TypeVar

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from shared.auth import Callers, TokenServerInterceptor
from shared.errors import (
    CheckpointError,
    ConfigError,
    ConflictError,
    DatasetError,
    PneumoniaError,
    ResourceExhaustedError,
)
from shared.storage import InvalidKeyError, NotFoundError, StorageError, StorageUnavailableError

log = logging.getLogger(__name__)

REQUEST_ID_KEY = "x-request-id"
SHUTDOWN_SIGNALS = (signal.SIGTERM, signal.SIGINT)

Method = TypeVar("Method", bound=Callable[..., Any])


class RequestCancelledError(PneumoniaError):
    """The client cancelled the call (or went away): the server stopped the work."""


class DeadlineExceededError(RequestCancelledError):
    """The call's deadline passed: the server stopped the work."""


# First match wins, so subclasses come before their bases.
STATUS_CODES: tuple[tuple[type[BaseException], grpc.StatusCode], ...] = (
    (DeadlineExceededError, grpc.StatusCode.DEADLINE_EXCEEDED),
    (RequestCancelledError, grpc.StatusCode.CANCELLED),
    (StorageUnavailableError, grpc.StatusCode.UNAVAILABLE),
    (NotFoundError, grpc.StatusCode.NOT_FOUND),
    (InvalidKeyError, grpc.StatusCode.INVALID_ARGUMENT),
    (ConfigError, grpc.StatusCode.INVALID_ARGUMENT),
    (ResourceExhaustedError, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (ValueError, grpc.StatusCode.INVALID_ARGUMENT),
    (CheckpointError, grpc.StatusCode.FAILED_PRECONDITION),  # wrong kind, unreadable, contradicts the request
    (DatasetError, grpc.StatusCode.FAILED_PRECONDITION),
    (ConflictError, grpc.StatusCode.FAILED_PRECONDITION),  # another live job owns the outputs
    (StorageError, grpc.StatusCode.INTERNAL),  # e.g. a stored object whose bytes no longer match its sha256
)
# shared.checkpoints.load_checkpoint's message for a missing file (it has no subclass of its own).
CHECKPOINT_NOT_FOUND_PREFIX = "checkpoint not found"


def status_for(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    """The status code and the client-facing message for an exception raised while serving a call.

    Our errors (PneumoniaError) and ValueError carry messages meant for the caller; anything else is a bug, whose
    details stay in the server's log.
    """
    if isinstance(exc, CheckpointError) and str(exc).startswith(CHECKPOINT_NOT_FOUND_PREFIX):
        return grpc.StatusCode.NOT_FOUND, str(exc)
    for error_type, code in STATUS_CODES:
        if isinstance(exc, error_type):
            return code, str(exc)
    if isinstance(exc, PneumoniaError):
        return grpc.StatusCode.INTERNAL, str(exc)
    return grpc.StatusCode.INTERNAL, "internal error; the server log has the details"


def abort_for(context: grpc.ServicerContext, exc: BaseException) -> NoReturn:
    """End the call with the status `status_for(exc)` (context.abort raises)."""
    code, message = status_for(exc)
    context.abort(code, message)
    raise AssertionError("unreachable: context.abort raises")  # for type checkers


def ensure_active(context: grpc.ServicerContext) -> None:
    """Raise DeadlineExceededError or RequestCancelledError when nobody waits for the result any more.

    Call it between the steps of long work (batches, uploads) so that the work stops soon after the deadline.
    """
    remaining = context.time_remaining()  # None without a deadline
    if remaining is not None and remaining <= 0:
        raise DeadlineExceededError("the call's deadline passed before the work finished; it was stopped")
    if not context.is_active():
        raise RequestCancelledError("the call was cancelled before the work finished; it was stopped")


def request_id(context: grpc.ServicerContext) -> str:
    """The client's x-request-id metadata, else a new random id."""
    for key, value in context.invocation_metadata() or ():
        if key == REQUEST_ID_KEY and value:
            return str(value)
    return uuid.uuid4().hex


class _CallLog:
    """What one call logs when it ends: one line with rpc, request_id, code and duration_ms."""

    def __init__(self, rpc: str, context: grpc.ServicerContext) -> None:
        self.rpc = rpc
        self.request_id = request_id(context)
        self.start = time.perf_counter()
        context.send_initial_metadata(((REQUEST_ID_KEY, self.request_id),))

    def finish(self, code: grpc.StatusCode, message: str = "", exc: BaseException | None = None) -> None:
        fields = {
            "rpc": self.rpc,
            "request_id": self.request_id,
            "code": code.name,
            "duration_ms": round((time.perf_counter() - self.start) * 1000, 1),
        }
        if code == grpc.StatusCode.OK:
            log.info("rpc ok", extra=fields)
        elif code == grpc.StatusCode.INTERNAL:
            log.error("rpc failed: %s", message, extra=fields, exc_info=exc)
        else:
            log.warning("rpc failed: %s", message, extra=fields)

    def fail(self, context: grpc.ServicerContext, exc: Exception) -> NoReturn:
        """Log the failure and end the call with its status; an abort the method made itself passes through."""
        if context.code() not in (None, grpc.StatusCode.OK):  # the method called context.abort already
            self.finish(context.code(), context.details() or "")
            raise exc
        self.finish(*status_for(exc), exc)
        abort_for(context, exc)


class FinalMessage(NamedTuple):
    """What a server-streaming rpc_method yields as its last message, the one that carries the answer: the call has
    ended well once that message is handed to gRPC, so a client that stops reading after it (as a client that has
    its answer may) is not logged as a cancellation. The method's generator is closed right after it."""

    message: Any


def rpc_method(method: Method) -> Method:
    """Decorate a servicer method (unary or server-streaming): request id, one log line, errors as status codes."""
    rpc = method.__name__

    if inspect.isgeneratorfunction(method):

        @functools.wraps(method)
        def streaming(self: Any, request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
            call = _CallLog(rpc, context)
            messages = method(self, request, context)
            final: FinalMessage | None = None
            try:
                for message in messages:
                    if isinstance(message, FinalMessage):
                        final = message
                        break
                    yield message
            except GeneratorExit:  # the client stopped reading before the end: cancelled, or its deadline passed
                call.finish(grpc.StatusCode.CANCELLED, "the client stopped reading the stream")
                raise
            except Exception as exc:
                call.fail(context, exc)
            finally:
                messages.close()
            call.finish(grpc.StatusCode.OK)
            if final is not None:
                yield final.message

        return streaming  # type: ignore[return-value]

    @functools.wraps(method)
    def unary(self: Any, request: Any, context: grpc.ServicerContext) -> Any:
        call = _CallLog(rpc, context)
        try:
            response = method(self, request, context)
        except Exception as exc:
            call.fail(context, exc)
        call.finish(grpc.StatusCode.OK)
        return response

    return unary  # type: ignore[return-value]


class Service(NamedTuple):
    """One gRPC service to serve: its full name (e.g. 'pneumonia.v1.GeneratorService'), servicer and adder."""

    name: str
    servicer: Any
    add_to_server: Callable[[Any, grpc.Server], None]


class GrpcServer:
    """A grpc.Server with health checking (grpc.health.v1) and server reflection, not started until start().

    `address` is 'host:port'; port 0 picks a free port (then read `port`). With `callers`, every call but a health
    check needs one of their bearer tokens (UNAUTHENTICATED otherwise); None serves everyone (said on purpose).
    """

    def __init__(
        self, services: Sequence[Service], address: str, *, callers: Callers | None, max_workers: int = 8
    ) -> None:
        self.service_names = tuple(service.name for service in services)
        self.callers = callers
        self.server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="grpc"),
            interceptors=[] if callers is None else [TokenServerInterceptor(callers)],
            options=[("grpc.so_reuseport", 0)],  # a second server on a port in use fails instead of sharing it
        )
        for service in services:
            service.add_to_server(service.servicer, self.server)
        self.health = health.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable_server_reflection(
            (*self.service_names, health.SERVICE_NAME, reflection.SERVICE_NAME), self.server
        )
        try:
            self.port = self.server.add_insecure_port(address)
        except RuntimeError as exc:  # grpc's "Failed to bind"
            raise ConfigError(f"cannot listen on {address}: {exc}") from exc
        self.address = f"{address.rpartition(':')[0]}:{self.port}"

    def start(self) -> None:
        """Start serving; health reports SERVING for each service and for the server as a whole ('')."""
        self.server.start()
        for name in ("", *self.service_names):
            self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        callers = None if self.callers is None else list(self.callers.names)
        log.info(
            "grpc server listening",
            extra={"address": self.address, "services": list(self.service_names), "callers": callers},
        )

    def stop(self, grace: float) -> None:
        """Graceful shutdown: health turns NOT_SERVING, new calls are refused, calls in flight get `grace` s."""
        self.health.enter_graceful_shutdown()  # every service NOT_SERVING, for good
        log.info("grpc server stopping", extra={"address": self.address, "grace_s": grace})
        self.server.stop(grace).wait()
        log.info("grpc server stopped", extra={"address": self.address})


def wait_for_signal(stop_early: Callable[[], bool] | None = None) -> signal.Signals | None:
    """Block the main thread until SIGTERM or SIGINT arrives and return it (the previous handlers come back); with
    `stop_early`, also return None as soon as it answers True (polled twice a second)."""
    received: list[signal.Signals] = []
    event = threading.Event()

    def handler(signum: int, frame: Any) -> None:
        received.append(signal.Signals(signum))
        event.set()

    previous = {sig: signal.signal(sig, handler) for sig in SHUTDOWN_SIGNALS}
    try:
        while not event.wait(0.5):  # a timed wait lets Python run the handler promptly
            if stop_early is not None and stop_early():
                return None
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
    log.info("received %s: shutting down", received[0].name, extra={"signal": received[0].name})
    return received[0]


def service_arguments(prog: str, description: str, argv: list[str] | None = None) -> argparse.Namespace:
    """The command line every `python -m services.<name>` shares (`-v`: debug logs); sets up the JSON logs."""
    parser = argparse.ArgumentParser(
        prog=prog, description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    args = parser.parse_args(argv)
    configure_json_logging(logging.DEBUG if args.verbose else logging.INFO)
    return args


# The attributes every LogRecord has; anything else on a record came from `extra=` and is logged as a field
# (except uvicorn's copy of the message with terminal colour codes).
_STANDARD_FIELDS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "asctime",
    "color_message",
}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts (UTC ISO 8601), level, logger, msg, the `extra=` fields, exc if any."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        entry.update((key, value) for key, value in vars(record).items() if key not in _STANDARD_FIELDS)
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def configure_json_logging(level: int = logging.INFO, stream: IO[str] | None = None) -> None:
    """Send every log record to `stream` (default stderr) as one JSON line, replacing other root handlers."""
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logging.basicConfig(level=level, handlers=[handler], force=True)
