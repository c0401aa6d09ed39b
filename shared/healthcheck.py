"""Container health check: exit 0 when a service answers healthy, 1 when not (Docker HEALTHCHECK, exec probes).

    python -m shared.healthcheck 127.0.0.1:50051                 # grpc.health.v1 Check of the whole server
    python -m shared.healthcheck 127.0.0.1:50052 --service pneumonia.v1.GeneratorService
    python -m shared.healthcheck http://127.0.0.1:8082/healthz   # HTTP GET answering 200

A target with an http:// or https:// scheme is checked over HTTP, anything else is a gRPC host:port. $VAR and ${VAR}
in the target are replaced from the environment (the exec form of a Docker HEALTHCHECK runs no shell), so a check
follows the port a container was configured with:

    python -m shared.healthcheck '127.0.0.1:${PNEUMONIA_TRAINER_GRPC_PORT}'

It prints one line with what it found and imports only grpc and the standard library, so that a check every few
seconds stays cheap.
"""

from __future__ import annotations

import argparse
import os
import sys
import urllib.error
import urllib.request

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

DEFAULT_TIMEOUT_S = 5.0


def check_grpc(address: str, service: str = "", timeout: float = DEFAULT_TIMEOUT_S) -> tuple[bool, str]:
    """(healthy, what was found) of grpc.health.v1 Check for `service` ('' = the whole server) at `address`."""
    with grpc.insecure_channel(address) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=timeout
            )
        except grpc.RpcError as exc:
            return False, f"{address}: {exc.code().name} {exc.details() or ''}".rstrip()
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    return reply.status == health_pb2.HealthCheckResponse.SERVING, f"{address} {service or '(server)'}: {status}"


def check_http(url: str, timeout: float = DEFAULT_TIMEOUT_S) -> tuple[bool, str]:
    """(healthy, what was found) of GET `url`: healthy when it answers 200."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status == 200, f"{url}: HTTP {response.status}"
    except urllib.error.HTTPError as exc:
        return False, f"{url}: HTTP {exc.code}"
    except (urllib.error.URLError, OSError) as exc:
        return False, f"{url}: {getattr(exc, 'reason', exc)}"


def check(target: str, service: str = "", timeout: float = DEFAULT_TIMEOUT_S) -> tuple[bool, str]:
    """Check an http(s) URL or a gRPC host:port."""
    if target.startswith(("http://", "https://")):
        return check_http(target, timeout)
    return check_grpc(target, service, timeout)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m shared.healthcheck", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("target", help="gRPC host:port, or an http(s):// URL")
    parser.add_argument("--service", default="", help="gRPC: the service to ask about (default: the whole server)")
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S, help="seconds to wait for the answer")
    args = parser.parse_args(argv)
    target = os.path.expandvars(args.target)
    if "$" in target:
        print(f"unhealthy: {args.target!r} names an environment variable that is not set")
        return 1
    healthy, found = check(target, args.service, args.timeout)
    print(("healthy: " if healthy else "unhealthy: ") + found)
    return 0 if healthy else 1


if __name__ == "__main__":
    sys.exit(main())
