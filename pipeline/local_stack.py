"""Every service as a local process on 127.0.0.1: the embedded stack behind `make experiment-local`.

    with LocalStack(work_dir) as endpoints:      # trainer, generator, analyzer, TorchServe; all healthy
        run_through_services(args, endpoints)    # the driver talks to them like to remote services
    # every process got SIGTERM and finished (or was killed after its grace period), also after Ctrl-C

Each service listens on a free port and shares one LocalStore directory (work_dir/storage); its JSON log goes to
work_dir/logs/<service>.log (the last lines are shown when it fails to start). The trainer, generator and analyzer
accept one caller, `orchestrator`, with a token made for this run (endpoints.token); TorchServe writes its own keys.
"""

from __future__ import annotations

import logging
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from pipeline.endpoints import ServiceEndpoints
from shared.errors import PneumoniaError

log = logging.getLogger(__name__)

STARTUP_TIMEOUT_S = 180.0  # TorchServe's JVM and first worker take ~20-40 s on 2 cores
STOP_GRACE_S = 60.0
LOG_TAIL_LINES = 20


class ServiceStartError(PneumoniaError):
    """A local service exited or never became healthy."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 nothing listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def grpc_serving(address: str) -> bool:
    """Whether the gRPC server at `address` reports SERVING (grpc.health.v1, whole server)."""
    with grpc.insecure_channel(address) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=2)
        except grpc.RpcError:
            return False
    return reply.status == health_pb2.HealthCheckResponse.SERVING


def http_ok(url: str) -> bool:
    """Whether GET `url` answers 200."""
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


@dataclass
class ServiceProcess:
    """One service: `python -m services.<name>` with its environment and health check, logging to LOGS/<name>.log."""

    name: str
    env: dict[str, str]
    healthy: Callable[[], bool]
    logs: Path
    process: subprocess.Popen | None = field(default=None, repr=False)

    @property
    def log_path(self) -> Path:
        return self.logs / f"{self.name}.log"

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log_file:
            self.process = subprocess.Popen(
                [sys.executable, "-m", f"services.{self.name}"],
                env={**os.environ, **self.env},
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # Ctrl-C reaches the driver, which stops the services in order
            )
        log.info("started %s (pid %d), log %s", self.name, self.process.pid, self.log_path)

    def wait_healthy(self, deadline: float) -> None:
        assert self.process is not None
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise ServiceStartError(f"{self.name} exited with code {self.process.returncode}\n{self.log_tail()}")
            if self.healthy():
                log.info("%s is healthy", self.name)
                return
            time.sleep(0.5)
        raise ServiceStartError(f"{self.name} not healthy after {STARTUP_TIMEOUT_S:.0f} s\n{self.log_tail()}")

    def stop(self, grace: float) -> None:
        """SIGTERM, wait up to `grace` s, then SIGKILL."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(grace)
        except subprocess.TimeoutExpired:
            log.warning("%s did not stop within %.0f s: killing it", self.name, grace)
            self.process.kill()
            self.process.wait()
        log.info("stopped %s (exit code %s)", self.name, self.process.returncode)

    def log_tail(self) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return "(no log)"
        return "\n".join(f"  {self.name}| {line}" for line in lines[-LOG_TAIL_LINES:])


class LocalStack:
    """Start every service on 127.0.0.1 with one LocalStore; a context manager yielding their ServiceEndpoints."""

    def __init__(self, work_dir: Path) -> None:
        self.work_dir = work_dir.resolve()
        self.storage_root = self.work_dir / "storage"
        self.processes: list[ServiceProcess] = []

    def storage_env(self) -> dict[str, str]:
        return {"PNEUMONIA_STORAGE_BACKEND": "local", "PNEUMONIA_STORAGE_ROOT": str(self.storage_root)}

    def build(self) -> ServiceEndpoints:
        """The processes to start, on free ports; returns where they will listen."""
        logs, scratch = self.work_dir / "logs", self.work_dir / "scratch"
        token = secrets.token_urlsafe(32)  # a token for this run only, passed in the environment
        common = {**self.storage_env(), "TQDM_DISABLE": "1"}
        ours = {**common, "PNEUMONIA_AUTH_TOKENS": f"orchestrator={token}"}
        ports = {name: free_port() for name in ("trainer", "generator", "generator_http", "analyzer")}
        ts_ports = {name: free_port() for name in ("inference", "management", "metrics", "grpc", "grpc_management")}
        endpoints = ServiceEndpoints(
            trainer=f"127.0.0.1:{ports['trainer']}",
            generator=f"127.0.0.1:{ports['generator']}",
            analyzer=f"127.0.0.1:{ports['analyzer']}",
            classifier_inference_url=f"http://127.0.0.1:{ts_ports['inference']}",
            classifier_management_url=f"http://127.0.0.1:{ts_ports['management']}",
            classifier_grpc=f"127.0.0.1:{ts_ports['grpc']}",
            classifier_key_file=scratch / "classifier" / "key_file.json",
            token=token,
        )
        self.processes = [
            ServiceProcess(
                "trainer",
                {
                    **ours,
                    "PNEUMONIA_TRAINER_GRPC_PORT": str(ports["trainer"]),
                    "PNEUMONIA_TRAINER_WORK_DIR": str(scratch / "trainer"),
                },
                lambda: grpc_serving(endpoints.trainer),
                logs,
            ),
            ServiceProcess(
                "generator",
                {
                    **ours,
                    "PNEUMONIA_GENERATOR_GRPC_PORT": str(ports["generator"]),
                    "PNEUMONIA_GENERATOR_HTTP_PORT": str(ports["generator_http"]),
                },
                lambda: grpc_serving(endpoints.generator),
                logs,
            ),
            ServiceProcess(
                "analyzer",
                {
                    **ours,
                    "PNEUMONIA_ANALYZER_GRPC_PORT": str(ports["analyzer"]),
                    "PNEUMONIA_ANALYZER_WORK_DIR": str(scratch / "analyzer"),
                },
                lambda: grpc_serving(endpoints.analyzer),
                logs,
            ),
            ServiceProcess(
                "classifier",
                {**common, **classifier_env(ts_ports, scratch / "classifier")},
                # TorchServe's /ping needs the inference key; its metrics endpoint answers once it is up.
                lambda: http_ok(f"http://127.0.0.1:{ts_ports['metrics']}/metrics"),
                logs,
            ),
        ]
        return endpoints

    def __enter__(self) -> ServiceEndpoints:
        endpoints = self.build()
        try:
            for process in self.processes:
                process.start()
            deadline = time.monotonic() + STARTUP_TIMEOUT_S
            for process in self.processes:
                process.wait_healthy(deadline)
        except BaseException:
            self.stop()
            raise
        return endpoints

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def stop(self) -> None:
        """Stop every process, the last started first."""
        for process in reversed(self.processes):
            process.stop(STOP_GRACE_S)


def classifier_env(ports: dict[str, int], work_dir: Path) -> dict[str, str]:
    """TorchServe's settings for a local run: our free ports; its model store is the LocalStore's
    models/model-store/ directory (the classifier service's default with the local backend)."""
    return {
        "PNEUMONIA_CLASSIFIER_INFERENCE_PORT": str(ports["inference"]),
        "PNEUMONIA_CLASSIFIER_MANAGEMENT_PORT": str(ports["management"]),
        "PNEUMONIA_CLASSIFIER_METRICS_PORT": str(ports["metrics"]),
        "PNEUMONIA_CLASSIFIER_GRPC_PORT": str(ports["grpc"]),
        "PNEUMONIA_CLASSIFIER_GRPC_MANAGEMENT_PORT": str(ports["grpc_management"]),
        "PNEUMONIA_CLASSIFIER_WORKDIR": str(work_dir),
    }
