"""Run the web page: `python -m services.web`, then open http://127.0.0.1:8090/ (PNEUMONIA_WEB_HTTP_PORT).

Settings come from environment variables: services.web.config (listed below), shared.storage.config (the object
store holding the results bucket) and shared.auth (the callers whose token the page accepts). Logs are JSON, one
object per line, on stderr. SIGTERM or SIGINT stops it gracefully: /healthz turns 503, requests in flight get
10 seconds to finish.
"""

from __future__ import annotations

import logging
import sys
import threading
import time

import uvicorn

from services.web import config as config_module
from services.web.app import create_app
from services.web.config import WebConfig
from services.web.inference import TorchServeInference
from services.web.reports import Reports
from shared.auth import AuthConfig
from shared.errors import PneumoniaError
from shared.grpc_service import service_arguments, wait_for_signal
from shared.storage import open_store

log = logging.getLogger("services.web")
GRACE_S = 10


def main(argv: list[str] | None = None) -> int:
    service_arguments("python -m services.web", f"{__doc__}\n{config_module.__doc__}", argv)
    try:
        callers = AuthConfig.from_env().callers()  # refuses to start without tokens, unless disabled
        config = WebConfig.from_env()
        store = open_store()
    except PneumoniaError as exc:
        log.error("cannot start: %s", exc)
        return 2
    inference = TorchServeInference(config.inference_url, config.key_file, config.timeout)
    reports = Reports(store, config.results_bucket, config.models_bucket, config.cache_seconds)
    serving = threading.Event()
    app = create_app(
        inference,
        reports,
        callers,
        model=config.model,
        max_upload_bytes=config.max_upload_bytes,
        is_serving=serving.is_set,
    )
    server = uvicorn.Server(
        uvicorn.Config(app, host=config.host, port=config.http_port, log_config=None, timeout_graceful_shutdown=GRACE_S)
    )
    # uvicorn installs no signal handlers outside the main thread: the main thread handles them below.
    thread = threading.Thread(target=server.run, name="http", daemon=True)
    thread.start()
    while not server.started:
        if not thread.is_alive():  # uvicorn logged why (e.g. the port is in use)
            log.error("cannot start the web page on %s:%d", config.host, config.http_port)
            return 2
        time.sleep(0.05)
    serving.set()
    log.info(
        "web page on http://%s:%d/",
        config.host,
        config.http_port,
        extra={"classifier": config.inference_url, "model": config.model, "results_bucket": config.results_bucket},
    )
    wait_for_signal()
    serving.clear()
    server.should_exit = True
    thread.join(GRACE_S + 5)
    inference.close()
    log.info("web page stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
