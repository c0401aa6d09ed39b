"""Bearer tokens between our services (shared.auth), against the real trainer, generator and analyzer processes:
every RPC and the generator's HTTP API refuse a call without an accepted token before doing anything; health
checks need none; a WebSocket handshake to the generator's HTTP server needs a token too; the generator serves no
/docs or /redoc; a service without tokens configured, or with a guessable one, refuses to start."""

from __future__ import annotations

import base64
import http.client
import json
import os
import secrets
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from google.protobuf.descriptor import ServiceDescriptor
from google.protobuf.message_factory import GetMessageClass
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase
from pneumonia_proto.v1 import analyzer_pb2, generator_pb2, trainer_pb2, trainer_pb2_grpc
from service_process import ROOT, service_process, serving_channel
from storage_server import free_port

from pipeline.through_services import ServiceCallError
from pipeline.through_services import channel as orchestrator_channel
from shared.auth import AuthConfig, Callers, ClientToken, bearer_token, parse_tokens
from shared.errors import ConfigError

ORCHESTRATOR = "orchestrator-" + "a1" * 16
OPERATOR = "operator-" + "b2c4" * 8
TOKENS = f"orchestrator={ORCHESTRATOR},operator={OPERATOR}"
WRONG = "wrong-" + "c3" * 16


# ------------------------------------------------------------------------------------------------ the token list


def test_tokens_parse_into_callers_that_identify_by_bearer_token() -> None:
    callers = Callers(parse_tokens(f" {TOKENS} ,"))
    assert callers.names == ("orchestrator", "operator")
    assert callers.identify(f"Bearer {ORCHESTRATOR}") == "orchestrator"
    assert callers.identify(f"bearer  {OPERATOR} ") == "operator"  # the scheme is case-insensitive
    for refused in (
        None,
        "",
        ORCHESTRATOR,
        f"Basic {ORCHESTRATOR}",
        f"Bearer {WRONG}",
        "Bearer",
        f"Bearer {OPERATOR}x",
    ):
        assert callers.identify(refused) is None, refused
    assert bearer_token("Bearer  abc ") == "abc" and bearer_token("Token abc") is None


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "lists no caller"),
        (f"orchestrator:{ORCHESTRATOR}", "expected name=token"),
        (f"Orchestrator={ORCHESTRATOR}", "expected name=token"),
        ("orchestrator=short-secret-token", "32\\+ characters"),
        (f"orchestrator={ORCHESTRATOR[:-1]}\u00e9", "32\\+ characters"),
        (f"orchestrator={ORCHESTRATOR},orchestrator={OPERATOR}", "listed twice"),
        (f"orchestrator={ORCHESTRATOR},operator={ORCHESTRATOR}", "same token"),
        ("orchestrator=" + "a" * 32, "10\\+ different characters"),  # the review's token: accepted before
        ("orchestrator=" + "a" * 64, "10\\+ different characters"),
        ("orchestrator=" + "ab" * 16, "10\\+ different characters"),
        (f"orchestrator={ORCHESTRATOR},operator={'012345678' * 4}", "entry 2 \\(operator\\).*10\\+ different"),
    ],
)
def test_a_bad_token_list_is_a_config_error_that_never_shows_a_token(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as error:
        AuthConfig.from_env({"PNEUMONIA_AUTH_TOKENS": text or ","})
    for secret in (ORCHESTRATOR, OPERATOR, "short-secret-token", "a" * 32, "ab" * 16, "012345678" * 4):
        assert secret not in str(error.value)


def test_a_token_needs_ten_different_characters_servers_and_clients_alike() -> None:
    """The review's 32 x "a" was accepted for its length; now a token needs 10+ different characters. Random tokens
    pass: `openssl rand -hex 32` (make_secrets) and secrets.token_urlsafe(32) (the local stack)."""
    assert parse_tokens("tester=" + "0123456789" * 4) == {"tester": "0123456789" * 4}  # exactly 10: enough
    for token in (secrets.token_hex(32), secrets.token_urlsafe(32)):
        assert AuthConfig.from_env({"PNEUMONIA_AUTH_TOKENS": f"tester={token}"}).callers().names == ("tester",)
    with pytest.raises(ConfigError, match="10\\+ different characters") as error:
        ClientToken.from_env({"PNEUMONIA_AUTH_TOKEN": "a" * 32})
    assert "a" * 32 not in str(error.value)


def test_a_service_needs_tokens_or_an_explicit_choice_to_serve_everyone() -> None:
    with pytest.raises(ConfigError, match="PNEUMONIA_AUTH_TOKENS is not set"):
        AuthConfig.from_env({}).callers()
    assert AuthConfig.from_env({"PNEUMONIA_AUTH_DISABLED": "true"}).callers() is None
    with pytest.raises(ConfigError, match="not both"):
        AuthConfig.from_env({"PNEUMONIA_AUTH_DISABLED": "true", "PNEUMONIA_AUTH_TOKENS": TOKENS}).callers()
    assert ORCHESTRATOR not in repr(AuthConfig.from_env({"PNEUMONIA_AUTH_TOKENS": TOKENS}))


# ------------------------------------------------------------------------------------------ the real services


@dataclass
class Served:
    """One started service: its gRPC port and service descriptor."""

    name: str
    port: int
    service: ServiceDescriptor


@dataclass
class Stack:
    services: list[Served]
    generator_http: int
    storage: Path


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """The trainer, generator and analyzer as processes, accepting the orchestrator's and the operator's tokens."""
    work = tmp_path_factory.mktemp("auth")
    storage = work / "storage"
    common = {
        "PNEUMONIA_STORAGE_BACKEND": "local",
        "PNEUMONIA_STORAGE_ROOT": str(storage),
        "PNEUMONIA_AUTH_TOKENS": TOKENS,
    }
    ports = {name: free_port() for name in ("trainer", "generator", "analyzer", "http")}
    envs = {
        "trainer": {
            "PNEUMONIA_TRAINER_GRPC_PORT": str(ports["trainer"]),
            "PNEUMONIA_TRAINER_WORK_DIR": str(work / "trainer"),
            "PNEUMONIA_TRAINER_DEVICE": "cpu",
        },
        "generator": {
            "PNEUMONIA_GENERATOR_GRPC_PORT": str(ports["generator"]),
            "PNEUMONIA_GENERATOR_HTTP_PORT": str(ports["http"]),
            "PNEUMONIA_GENERATOR_DEVICE": "cpu",
        },
        "analyzer": {
            "PNEUMONIA_ANALYZER_GRPC_PORT": str(ports["analyzer"]),
            "PNEUMONIA_ANALYZER_WORK_DIR": str(work / "analyzer"),
        },
    }
    descriptors = {
        "trainer": trainer_pb2.DESCRIPTOR.services_by_name["TrainerService"],
        "generator": generator_pb2.DESCRIPTOR.services_by_name["GeneratorService"],
        "analyzer": analyzer_pb2.DESCRIPTOR.services_by_name["AnalyzerService"],
    }
    with ExitStack() as started:
        for name, env in envs.items():
            started.enter_context(service_process(name, {**common, **env}))
        served = [Served(name, ports[name], descriptors[name]) for name in envs]
        for service in served:  # wait until each is up
            started.enter_context(serving_channel(service.port, service.service.full_name, token=None))
        yield Stack(served, ports["http"], storage)


def call(channel: grpc.Channel, service: ServiceDescriptor, method_name: str, token: str | None) -> grpc.StatusCode:
    """Call `method_name` with an empty request (and `token` as a bearer token); the status it ends with."""
    method = service.methods_by_name[method_name]
    request = GetMessageClass(method.input_type)()
    path = f"/{service.full_name}/{method.name}"
    codecs = {"request_serializer": type(request).SerializeToString, "response_deserializer": bytes}
    metadata = None if token is None else (("authorization", f"Bearer {token}"),)
    try:
        if method.server_streaming:
            for _ in channel.unary_stream(path, **codecs)(request, metadata=metadata, timeout=20):
                pass
        else:
            channel.unary_unary(path, **codecs)(request, metadata=metadata, timeout=20)
    except grpc.RpcError as error:
        return error.code()
    return grpc.StatusCode.OK


def snapshot(root: Path) -> dict[str, int]:
    return {str(path.relative_to(root)): path.stat().st_size for path in root.rglob("*") if path.is_file()}


def test_every_rpc_refuses_a_missing_or_wrong_token_before_doing_anything(stack: Stack) -> None:
    before = snapshot(stack.storage)
    refused = 0
    for served in stack.services:
        with grpc.insecure_channel(f"127.0.0.1:{served.port}") as channel:
            for method in served.service.methods:
                for token in (None, WRONG, ORCHESTRATOR[:-1]):
                    assert call(channel, served.service, method.name, token) == grpc.StatusCode.UNAUTHENTICATED, (
                        served.name,
                        method.name,
                        token,
                    )
                    refused += 1
    assert refused == 3 * (5 + 2 + 1)  # the trainer's five RPCs, the generator's two, the analyzer's one
    assert snapshot(stack.storage) == before  # no job record, no image, no manifest: nothing was done


def test_a_real_request_without_a_token_starts_no_job(stack: Stack) -> None:
    trainer = next(served for served in stack.services if served.name == "trainer")
    with grpc.insecure_channel(f"127.0.0.1:{trainer.port}") as channel:
        request = trainer_pb2.StartGanJobRequest(output_prefix="runs/intruder/gan")
        with pytest.raises(grpc.RpcError) as refused:
            trainer_pb2_grpc.TrainerServiceStub(channel).StartGanJob(request, timeout=20)
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "missing credential" in refused.value.details()
    assert not (stack.storage / "models").exists() or not list((stack.storage / "models").rglob("*.json"))


def test_each_accepted_caller_gets_through_to_the_service(stack: Stack) -> None:
    """Past authentication the service answers for itself: an empty request is invalid."""
    expected = {
        "trainer": ("GetJob", grpc.StatusCode.INVALID_ARGUMENT),
        "generator": ("Generate", grpc.StatusCode.INVALID_ARGUMENT),
        "analyzer": ("Analyze", grpc.StatusCode.INVALID_ARGUMENT),
    }
    for served in stack.services:
        method, code = expected[served.name]
        with grpc.insecure_channel(f"127.0.0.1:{served.port}") as channel:
            assert call(channel, served.service, method, OPERATOR) == code
        # the orchestrator's own channel (pipeline.through_services) carries its token on every call
        with orchestrator_channel(f"127.0.0.1:{served.port}", ORCHESTRATOR) as channel:
            assert call(channel, served.service, method, None) == code
            assert call(channel, served.service, method, WRONG) == code  # its token replaces the one a call names


def test_the_orchestrator_says_which_token_to_set_when_refused(stack: Stack) -> None:
    trainer = next(served for served in stack.services if served.name == "trainer")
    request = trainer_pb2.GetJobRequest(job_id="x")
    with orchestrator_channel(f"127.0.0.1:{trainer.port}", WRONG) as channel, pytest.raises(grpc.RpcError) as refused:
        trainer_pb2_grpc.TrainerServiceStub(channel).GetJob(request, timeout=20)
    message = str(ServiceCallError.of(refused.value))
    assert message.startswith("a service call failed: UNAUTHENTICATED: invalid credential")
    assert "PNEUMONIA_AUTH_TOKEN" in message and WRONG not in message


def test_health_needs_no_token_and_reflection_does(stack: Stack) -> None:
    for served in stack.services:
        with grpc.insecure_channel(f"127.0.0.1:{served.port}") as channel:
            for name in ("", served.service.full_name):
                reply = health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(service=name), timeout=10
                )
                assert reply.status == health_pb2.HealthCheckResponse.SERVING
            with pytest.raises(grpc.RpcError) as refused:
                ProtoReflectionDescriptorDatabase(channel).get_services()
            assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
        with serving_channel(served.port, served.service.full_name, token=OPERATOR) as channel:
            assert served.service.full_name in ProtoReflectionDescriptorDatabase(channel).get_services()


def http_status(url: str, body: bytes | None, token: str | None) -> tuple[int, dict[str, str]]:
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    try:
        with urllib.request.urlopen(urllib.request.Request(url, body, headers), timeout=20) as response:
            return response.status, dict(response.headers)
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers)


def test_the_generator_http_api_answers_401_without_an_accepted_token(stack: Stack) -> None:
    base = f"http://127.0.0.1:{stack.generator_http}"
    before = snapshot(stack.storage)
    body = json.dumps({"checkpoint": {"key": "gan/generator_final.pth"}, "num_images": 4}).encode()
    for token in (None, WRONG):
        status, headers = http_status(f"{base}/v1/generate", body, token)
        assert status == 401 and headers.get("www-authenticate") == "Bearer"
    # refused before the body is read: a request that announces 10 MiB and sends none is answered at once
    connection = http.client.HTTPConnection("127.0.0.1", stack.generator_http, timeout=20)
    connection.putrequest("POST", "/v1/generate")
    connection.putheader("Content-Length", str(10 << 20))
    connection.endheaders()
    assert connection.getresponse().status == 401
    connection.close()
    assert snapshot(stack.storage) == before
    assert http_status(f"{base}/v1/generate", b"{}", OPERATOR)[0] == 422  # let in; the empty body is what is refused
    assert http_status(f"{base}/healthz", None, None)[0] == 200


def test_the_generator_serves_no_docs_and_its_openapi_document_needs_a_token(stack: Stack) -> None:
    """/docs and /redoc (pages that loaded Swagger UI and ReDoc from a CDN, open to anyone) are gone: 401 without a
    token, 404 with one; /openapi.json needs the token."""
    base = f"http://127.0.0.1:{stack.generator_http}"
    for path in ("/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json"):
        assert http_status(base + path, None, None)[0] == 401, path
    for path in ("/docs", "/docs/oauth2-redirect", "/redoc"):
        assert http_status(base + path, None, OPERATOR)[0] == 404, path
    request = urllib.request.Request(f"{base}/openapi.json", headers={"Authorization": f"Bearer {OPERATOR}"})
    schema = json.loads(urllib.request.urlopen(request, timeout=20).read())
    assert "/v1/generate" in schema["paths"] and "HTTPBearer" in schema["components"]["securitySchemes"]


def websocket_handshake(port: int, path: str, token: str | None) -> tuple[int, dict[str, str]]:
    """The status and headers a server answers a WebSocket opening handshake (RFC 6455) with."""
    headers = {
        "Connection": "Upgrade",
        "Upgrade": "websocket",
        "Sec-WebSocket-Version": "13",
        "Sec-WebSocket-Key": base64.b64encode(os.urandom(16)).decode(),
    }
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
    try:
        connection.request("GET", path, headers=headers)
        response = connection.getresponse()
        return response.status, {name.lower(): value for name, value in response.getheaders()}
    finally:
        connection.close()


def test_a_websocket_handshake_without_a_token_is_refused_by_the_generator(stack: Stack) -> None:
    """WebSocket handshakes to the generator's uvicorn server: without an accepted token the handshake gets 401 from
    the token check (before, BearerAuth let every non-HTTP connection through to the app); with one it reaches the
    app, which serves no WebSocket and refuses it itself (403); nothing is stored either way."""
    before = snapshot(stack.storage)
    for path in ("/v1/generate", "/healthz"):
        for token in (None, WRONG, "a" * 32):
            status, headers = websocket_handshake(stack.generator_http, path, token)
            assert (status, headers.get("www-authenticate")) == (401, "Bearer"), (path, token)
        status, _ = websocket_handshake(stack.generator_http, path, OPERATOR)
        assert status == 403  # past the token check: the app has no WebSocket endpoint
    assert snapshot(stack.storage) == before


def start_refused(env: dict[str, str]) -> str:
    """Start the analyzer with `env`; it must exit 2 at once; its log."""
    result = subprocess.run(
        [sys.executable, "-m", "services.analyzer"],
        cwd=ROOT,
        env={**{k: v for k, v in os.environ.items() if not k.startswith("PNEUMONIA_")}, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2, result.stderr
    return result.stderr


def test_a_service_without_tokens_or_with_a_bad_list_refuses_to_start(tmp_path: Path) -> None:
    base = {"PNEUMONIA_STORAGE_ROOT": str(tmp_path), "PNEUMONIA_ANALYZER_GRPC_PORT": "0"}
    assert "PNEUMONIA_AUTH_TOKENS is not set" in start_refused(base)
    log = start_refused({**base, "PNEUMONIA_AUTH_TOKENS": "operator=too-short-to-guess"})
    assert "32+ characters" in log and "too-short-to-guess" not in log
    log = start_refused({**base, "PNEUMONIA_AUTH_TOKENS": "operator=" + "a" * 32})  # long, but one character
    assert "10+ different characters" in log and "a" * 32 not in log
