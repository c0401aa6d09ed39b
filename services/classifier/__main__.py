"""Run the classifier service: TorchServe in the foreground with our configuration and handler.

    python -m services.classifier
    python -m services.classifier.oip    # the other runtime: the Open Inference Protocol (KServe v2), see its --help

Settings come from environment variables (services.classifier.config, listed below). Logs are JSON, one object per
line, on stderr; TorchServe's own console lines come through as records of the logger 'torchserve'. Token
authorization stays on: clients read the keys from <PNEUMONIA_CLASSIFIER_WORKDIR>/key_file.json, which this process
renews (through TorchServe's /token API) at half the keys' lifetime. SIGTERM or SIGINT stops TorchServe gracefully
(requests in flight finish; PNEUMONIA_CLASSIFIER_GRACE seconds at most). Exits 0 after a signal, 1 when TorchServe
dies on its own, 2 when it cannot start (bad settings, no Java 17+, or a TorchServe worker that cannot import the
handler).
"""

from __future__ import annotations

import logging
import sys
import threading
import time

from services.classifier import config as config_module
from services.classifier.config import ClassifierConfig
from services.classifier.torchserve import WORKER_MODULES, TorchServe, worker_import_problem
from shared.errors import PneumoniaError
from shared.grpc_service import service_arguments, wait_for_signal

log = logging.getLogger("services.classifier")


def renew_keys_until(server: TorchServe, stop: threading.Event, interval_s: float) -> None:
    """Renew TorchServe's keys every `interval_s` seconds until `stop` is set (failures are logged, then retried)."""
    while not stop.wait(interval_s):
        try:
            server.renew_keys()
        except (PneumoniaError, OSError) as exc:
            log.error("cannot renew the TorchServe keys: %s", exc)


def main(argv: list[str] | None = None) -> int:
    service_arguments("python -m services.classifier", f"{__doc__}\n{config_module.__doc__}", argv)

    try:
        config = ClassifierConfig.from_env()
    except PneumoniaError as exc:
        log.error("cannot start: %s", exc)
        return 2
    problem = worker_import_problem()
    if problem is not None:
        log.error("cannot start: TorchServe's worker cannot import %s: %s", ", ".join(WORKER_MODULES), problem)
        return 2
    server = TorchServe(config, relay_output=True)
    start = time.monotonic()
    try:
        server.start()
        server.wait_ready()
    except (PneumoniaError, OSError) as exc:
        log.error("cannot start TorchServe: %s", exc)
        server.stop()
        return 2
    log.info(
        "classifier service ready",
        extra={**server.environment(), "startup_s": round(time.monotonic() - start, 1), "models": list(config.models)},
    )

    stop = threading.Event()
    renewer = threading.Thread(
        target=renew_keys_until,
        args=(server, stop, config.token_expiration_min * 60 / 2),
        name="key-renewal",
        daemon=True,
    )
    renewer.start()
    received = wait_for_signal(stop_early=lambda: not server.running())
    stop.set()
    if received is None:
        log.error("TorchServe exited on its own: %s", server.output_tail(5))
    server.stop()
    log.info("classifier service stopped")
    return 0 if received is not None else 1


if __name__ == "__main__":
    sys.exit(main())
