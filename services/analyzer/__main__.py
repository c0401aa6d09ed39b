"""Run the analyzer service: gRPC (AnalyzerService, health, reflection) in one process.

    python -m services.analyzer

Settings come from environment variables: services.analyzer.config (listed below) and shared.storage.config
(the object store). Logs are JSON, one object per line, on stderr. SIGTERM or SIGINT shuts down gracefully:
health turns NOT_SERVING, new calls are refused, an analysis in flight gets PNEUMONIA_ANALYZER_GRACE seconds to
finish (after that it is cancelled and stops at its next phase, storing no report).
"""

from __future__ import annotations

import logging
import os
import sys

from pneumonia_proto.v1 import analyzer_pb2_grpc

# tqdm reads TQDM_* once, when the analysis code below imports it: its progress bars would break the JSON log.
os.environ.setdefault("TQDM_DISABLE", "1")

from services.analyzer import config as config_module  # noqa: E402
from services.analyzer.config import AnalyzerConfig  # noqa: E402
from services.analyzer.service import SERVICE_NAME, AnalysisService, AnalyzerServicer  # noqa: E402
from shared.auth import AuthConfig  # noqa: E402
from shared.errors import PneumoniaError  # noqa: E402
from shared.grpc_service import GrpcServer, Service, service_arguments, wait_for_signal  # noqa: E402
from shared.storage import open_store  # noqa: E402

log = logging.getLogger("services.analyzer")


def main(argv: list[str] | None = None) -> int:
    service_arguments("python -m services.analyzer", f"{__doc__}\n{config_module.__doc__}", argv)

    try:
        callers = AuthConfig.from_env().callers()  # refuses to start without tokens, unless disabled
        config = AnalyzerConfig.from_env()
        service = AnalysisService(config, open_store())
        servicer = Service(
            SERVICE_NAME, AnalyzerServicer(service), analyzer_pb2_grpc.add_AnalyzerServiceServicer_to_server
        )
        server = GrpcServer(
            [servicer], f"{config.host}:{config.grpc_port}", callers=callers, max_workers=config.workers
        )
    except PneumoniaError as exc:
        log.error("cannot start: %s", exc)
        return 2

    server.start()
    log.info("analyzer service ready", extra={"grpc": server.address})
    wait_for_signal()
    server.stop(config.grace)
    log.info("analyzer service stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
