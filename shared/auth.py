"""Bearer tokens between our services: which callers a server accepts, and what a client sends.

A server (trainer, generator, analyzer) reads the callers it accepts from PNEUMONIA_AUTH_TOKENS, e.g.
`orchestrator=<token>,operator=<token>`: every gRPC call and HTTP request must carry `authorization: Bearer <token>`
with one of them, or it is refused (gRPC UNAUTHENTICATED, HTTP 401) before any of the server's code runs. Health
checks (grpc.health.v1 and GET /healthz) need no token, so that Docker's and Kubernetes' probes work without secrets.
A client sends its own token, PNEUMONIA_AUTH_TOKEN. A service started without PNEUMONIA_AUTH_TOKENS refuses to start
unless PNEUMONIA_AUTH_DISABLED=true says, on purpose, that its network is trusted.

Why tokens and not mTLS: each caller has its own secret (revoked by removing one entry), TorchServe already works
this way (its inference and management keys), and probes need no certificates. Tokens travel in clear text on our
plaintext gRPC/HTTP ports: keep those ports on a private network (compose publishes none of them; k8s/ has
NetworkPolicies) or add TLS in front (a service mesh).

The variables, generated from AuthConfig:
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import grpc
from pydantic import SecretStr, field_validator

from shared.errors import ConfigError
from shared.settings import Settings, setting, settings_help

log = logging.getLogger(__name__)

AUTHORIZATION = "authorization"  # gRPC metadata keys are lower case; HTTP headers are case-insensitive
MIN_TOKEN_CHARS = 32
# A token must also use this many different characters: 32 x "a", "ab" repeated or a word padded with one character
# are guessed long before their length says. A random token passes: `openssl rand -hex 32` (64 hex digits) has fewer
# than 10 different digits with a probability far below 1e-12 (32 hex digits: ~1e-4, generate another).
MIN_TOKEN_DISTINCT_CHARS = 10
TOKEN_PATTERN = re.compile(r"[A-Za-z0-9._~+/=-]+")  # RFC 6750's b64token
CALLER_PATTERN = re.compile(r"[a-z][a-z0-9-]{0,62}")
OPEN_GRPC_PREFIXES = ("/grpc.health.v1.Health/",)  # probes call these without a token


class AuthConfig(Settings):
    """Who may call this service. The tokens are SecretStr: a repr, a log or an error never shows them."""

    tokens: SecretStr | None = setting(
        None,
        "callers this service accepts, `name=token,...` (tokens of 32+ characters, 10+ of them different; "
        "`openssl rand -hex 32`)",
        env="PNEUMONIA_AUTH_TOKENS",
        shown_default="required",
    )
    disabled: bool = setting(
        False,
        "serve every caller without a token (a trusted network only; logged as a warning at start)",
        env="PNEUMONIA_AUTH_DISABLED",
    )

    @field_validator("tokens")
    @classmethod
    def _tokens_parse(cls, tokens: SecretStr | None) -> SecretStr | None:
        if tokens is not None:
            parse_tokens(tokens.get_secret_value())  # a bad list fails at start, not at the first call
        return tokens

    def callers(self) -> Callers | None:
        """The accepted callers; None when authentication is disabled. ConfigError when neither is configured."""
        if self.disabled:
            if self.tokens is not None:
                raise ConfigError("set PNEUMONIA_AUTH_TOKENS or PNEUMONIA_AUTH_DISABLED=true, not both")
            log.warning("authentication is disabled (PNEUMONIA_AUTH_DISABLED=true): every caller is served")
            return None
        if self.tokens is None:
            raise ConfigError(
                "PNEUMONIA_AUTH_TOKENS is not set: list the callers this service accepts as name=token pairs "
                "(README, Security), or set PNEUMONIA_AUTH_DISABLED=true on a trusted network"
            )
        return Callers(parse_tokens(self.tokens.get_secret_value()))


def parse_tokens(text: str) -> dict[str, str]:
    """{caller: token} from `name=token,name=token`; ValueError (never quoting a token) when malformed."""
    callers: dict[str, str] = {}
    for number, entry in enumerate(filter(None, (part.strip() for part in text.split(","))), start=1):
        name, sep, token = entry.partition("=")
        name, token = name.strip(), token.strip()
        where = f"entry {number}"
        if not sep or not CALLER_PATTERN.fullmatch(name):
            raise ValueError(f"{where}: expected name=token with a name of lower-case letters, digits and '-'")
        check_token(token, f"{where} ({name}): ")
        if name in callers:
            raise ValueError(f"{where}: caller {name!r} is listed twice")
        if token in callers.values():
            raise ValueError(f"{where} ({name}): the same token is given to two callers")
        callers[name] = token
    if not callers:
        raise ValueError("lists no caller")
    return callers


def check_token(token: str, where: str = "") -> None:
    """ValueError unless `token` is long enough, made of RFC 6750 token characters and not trivially guessable (at
    least MIN_TOKEN_DISTINCT_CHARS different characters); the message never quotes it."""
    if len(token) < MIN_TOKEN_CHARS or not TOKEN_PATTERN.fullmatch(token):
        raise ValueError(f"{where}the token must be {MIN_TOKEN_CHARS}+ characters of A-Z a-z 0-9 . _ ~ + / = -")
    if len(set(token)) < MIN_TOKEN_DISTINCT_CHARS:
        raise ValueError(
            f"{where}the token is too easy to guess: it needs {MIN_TOKEN_DISTINCT_CHARS}+ different characters "
            "(a random one: `openssl rand -hex 32`)"
        )


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


class Callers:
    """The accepted callers; only the tokens' sha256 digests are kept, compared in constant time."""

    def __init__(self, tokens: Mapping[str, str]) -> None:
        self._digests = {name: _digest(token) for name, token in tokens.items()}

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self._digests)

    def identify(self, authorization: str | None) -> str | None:
        """The caller whose token `authorization` ('Bearer <token>') carries, else None."""
        token = bearer_token(authorization)
        if token is None:
            return None
        digest = _digest(token)
        found = None
        for name, expected in self._digests.items():  # no early exit: the time does not tell which entry matched
            if hmac.compare_digest(digest, expected):
                found = name
        return found


def bearer_token(authorization: str | None) -> str | None:
    """The token of an 'authorization: Bearer <token>' value (scheme case-insensitive), else None."""
    if not authorization:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None


def refusal_reason(authorization: str | None) -> str:
    """What the caller is told: no token, or a token we do not accept (never which part was wrong)."""
    if bearer_token(authorization) is None:
        return "missing credential: send 'authorization: Bearer <token>'"
    return "invalid credential"


# ---------------------------------------------------------------------------------------------------------- gRPC


def _metadata_value(metadata: Iterable[tuple[str, Any]] | None, key: str) -> str | None:
    for name, value in metadata or ():
        if name == key:
            return value if isinstance(value, str) else None
    return None


class TokenServerInterceptor(grpc.ServerInterceptor):
    """Refuse every call without an accepted bearer token with UNAUTHENTICATED, before the servicer runs; the
    health service is open."""

    def __init__(self, callers: Callers, open_prefixes: tuple[str, ...] = OPEN_GRPC_PREFIXES) -> None:
        self.callers = callers
        self.open_prefixes = open_prefixes

    def intercept_service(
        self, continuation: Callable[[grpc.HandlerCallDetails], Any], details: grpc.HandlerCallDetails
    ) -> Any:
        if details.method.startswith(self.open_prefixes):
            return continuation(details)
        authorization = _metadata_value(details.invocation_metadata, AUTHORIZATION)
        if self.callers.identify(authorization) is not None:
            return continuation(details)
        handler = continuation(details)
        if handler is None:  # an unknown method: UNIMPLEMENTED tells nothing an unauthenticated caller may not know
            return None
        reason = refusal_reason(authorization)
        log.warning("refused an unauthenticated call: %s", reason, extra={"rpc": details.method})
        return _refusing_handler(handler, reason)


def _refusing_handler(handler: grpc.RpcMethodHandler, reason: str) -> grpc.RpcMethodHandler:
    """A handler of the same kind as `handler` that aborts with UNAUTHENTICATED."""

    def refuse(request: Any, context: grpc.ServicerContext) -> Any:
        context.abort(grpc.StatusCode.UNAUTHENTICATED, reason)

    codecs = {
        "request_deserializer": handler.request_deserializer,
        "response_serializer": handler.response_serializer,
    }
    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(refuse, **codecs)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(refuse, **codecs)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(refuse, **codecs)
    return grpc.unary_unary_rpc_method_handler(refuse, **codecs)


class _ClientCallDetails(grpc.ClientCallDetails):
    def __init__(self, details: grpc.ClientCallDetails, metadata: list[tuple[str, str]]) -> None:
        self.method = details.method
        self.timeout = details.timeout
        self.metadata = metadata
        self.credentials = details.credentials
        self.wait_for_ready = details.wait_for_ready
        self.compression = details.compression


class TokenClientInterceptor(
    grpc.UnaryUnaryClientInterceptor,
    grpc.UnaryStreamClientInterceptor,
    grpc.StreamUnaryClientInterceptor,
    grpc.StreamStreamClientInterceptor,
):
    """Add `authorization: Bearer <token>` to every call of a channel."""

    def __init__(self, token: str) -> None:
        self._header = (AUTHORIZATION, f"Bearer {token}")

    def _with_token(self, details: grpc.ClientCallDetails) -> grpc.ClientCallDetails:
        metadata = [item for item in (details.metadata or ()) if item[0] != AUTHORIZATION]
        return _ClientCallDetails(details, [*metadata, self._header])

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._with_token(details), request)

    def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._with_token(details), request)

    def intercept_stream_unary(self, continuation: Any, details: Any, requests: Any) -> Any:
        return continuation(self._with_token(details), requests)

    def intercept_stream_stream(self, continuation: Any, details: Any, requests: Any) -> Any:
        return continuation(self._with_token(details), requests)


def authenticated_channel(
    address: str, token: str | None, options: list[tuple[str, Any]] | None = None
) -> grpc.Channel:
    """An insecure channel to `address` whose calls carry `token` (none when token is None: for servers with
    authentication disabled)."""
    channel = grpc.insecure_channel(address, options=options)
    return channel if token is None else grpc.intercept_channel(channel, TokenClientInterceptor(token))


class ClientToken(Settings):
    """What a client of our services sends."""

    token: SecretStr | None = setting(
        None, "this caller's token, sent as 'authorization: Bearer'", env="PNEUMONIA_AUTH_TOKEN", shown_default="none"
    )

    @field_validator("token")
    @classmethod
    def _token_valid(cls, token: SecretStr | None) -> SecretStr | None:
        if token is not None:
            check_token(token.get_secret_value())
        return token

    def value(self) -> str | None:
        return None if self.token is None else self.token.get_secret_value()


__doc__ += settings_help(AuthConfig, ClientToken)
