"""Run the generator service: gRPC (GeneratorService, health, reflection) and HTTP (FastAPI) in one process.

    python -m services.generator

Settings come from environment variables: services.generator.config (listed below) and shared.storage.config
(the object store). Logs are JSON, one object per line, on stderr. SIGTERM or SIGINT shuts down gracefully:
health turns NOT_SERVING (gRPC health and /healthz), new calls are refused, calls in flight get
PNEUMONIA_GENERATOR_GRACE seconds to finish.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time

import uvicorn
from pneumonia_proto.v1 import generator_pb2_grpc

# tqdm reads TQDM_* once, when the generator code below imports it: its progress bars would break the JSON log.
os.environ.setdefault("TQDM_DISABLE", "1")

from services.generator import config as config_module  # noqa: E402
from services.generator.config import GeneratorConfig  # noqa: E402
from services.generator.http_api import create_app  # noqa: E402
from services.generator.service import SERVICE_NAME, GeneratorServicer, SyntheticImageService  # noqa: E402
from shared.auth import AuthConfig  # noqa: E402
from shared.errors import PneumoniaError  # noqa: E402
from shared.grpc_service import GrpcServer, Service, service_arguments, wait_for_signal  # noqa: E402
from shared.storage import open_store  # noqa: E402

log = logging.getLogger("services.generator")


def main(argv: list[str] | None = None) -> int:
    service_arguments("python -m services.generator", f"{__doc__}\n{config_module.__doc__}", argv)

    try:
        callers = AuthConfig.from_env().callers()  # refuses to start without tokens, unless disabled
        config = GeneratorConfig.from_env()
        service = SyntheticImageService(config, open_store())
        servicer = Service(
            SERVICE_NAME, GeneratorServicer(service), generator_pb2_grpc.add_GeneratorServiceServicer_to_server
        )
        grpc_server = GrpcServer(
            [servicer], f"{config.host}:{config.grpc_port}", callers=callers, max_workers=config.workers
        )
    except PneumoniaError as exc:
        log.error("cannot start: %s", exc)
        return 2

    serving = threading.Event()
    http_server = uvicorn.Server(
        uvicorn.Config(
            create_app(service, callers, is_serving=serving.is_set),
            host=config.host,
            port=config.http_port,
            log_config=None,  # uvicorn's records go through our JSON handler
            timeout_graceful_shutdown=int(config.grace),
        )
    )
    # uvicorn installs no signal handlers outside the main thread: the main thread handles them below.
    http_thread = threading.Thread(target=http_server.run, name="http", daemon=True)

    grpc_server.start()
    http_thread.start()
    while not http_server.started:
        if not http_thread.is_alive():  # uvicorn logged why (e.g. the port is in use)
            log.error("cannot start the HTTP server on %s:%d", config.host, config.http_port)
            grpc_server.stop(grace=0)
            return 2
        time.sleep(0.05)
    serving.set()
    log.info("generator service ready", extra={"grpc": grpc_server.address, "http_port": config.http_port})

    wait_for_signal()
    serving.clear()
    http_server.should_exit = True
    grpc_server.stop(config.grace)
    http_thread.join(config.grace + 5)
    log.info("generator service stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
