"""Run the trainer service: gRPC (TrainerService, health, reflection), one worker thread training jobs in turn.

    python -m services.trainer

Settings come from environment variables: services.trainer.config (listed below) and shared.storage.config (the
object store). Logs are JSON, one object per line, on stderr. On start, jobs a previous run left queued or running
are queued again (running ones resume from their last stored checkpoint). SIGTERM or SIGINT shuts down gracefully:
health turns NOT_SERVING, new calls and jobs are refused, watches end, and the running job stops at its next
checkpoint (its record stays resumable); the process exits within PNEUMONIA_TRAINER_GRACE seconds.
"""

from __future__ import annotations

import logging
import os
import sys
import time

# The training jobs fork DataLoader workers inside this gRPC server; they never use gRPC, so gRPC's fork handlers
# have nothing to do (with them on, each fork logs "Other threads are currently calling into gRPC, skipping fork()
# handlers"). gRPC reads this when it starts, before the import below.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")

from pneumonia_proto.v1 import trainer_pb2_grpc  # noqa: E402

# tqdm reads TQDM_* once, when the training code below imports it: its progress bars would break the JSON log.
os.environ.setdefault("TQDM_DISABLE", "1")

from services.trainer import config as config_module  # noqa: E402
from services.trainer.config import TrainerConfig  # noqa: E402
from services.trainer.jobs import JobManager  # noqa: E402
from services.trainer.service import SERVICE_NAME, TrainerServicer  # noqa: E402
from shared.auth import AuthConfig  # noqa: E402
from shared.distributed import warn_if_gpus_idle  # noqa: E402
from shared.errors import PneumoniaError  # noqa: E402
from shared.grpc_service import GrpcServer, Service, service_arguments, wait_for_signal  # noqa: E402
from shared.storage import open_store  # noqa: E402

log = logging.getLogger("services.trainer")


def main(argv: list[str] | None = None) -> int:
    service_arguments("python -m services.trainer", f"{__doc__}\n{config_module.__doc__}", argv)

    try:
        callers = AuthConfig.from_env().callers()  # refuses to start without tokens, unless disabled
        config = TrainerConfig.from_env()
        config.check_device()
        if config.device != "cpu":
            warn_if_gpus_idle("the trainer service runs its jobs in its own process and")
        jobs = JobManager(config, open_store())
        servicer = Service(SERVICE_NAME, TrainerServicer(jobs), trainer_pb2_grpc.add_TrainerServiceServicer_to_server)
        grpc_server = GrpcServer(
            [servicer], f"{config.host}:{config.grpc_port}", callers=callers, max_workers=config.workers
        )
        jobs.start()  # reads the stored job records: fails here when storage is down
    except PneumoniaError as exc:
        log.error("cannot start: %s", exc)
        return 2

    grpc_server.start()
    log.info("trainer service ready", extra={"grpc": grpc_server.address, "work_dir": str(config.work_dir)})

    wait_for_signal()
    deadline = time.monotonic() + config.grace
    jobs.begin_shutdown()
    grpc_server.stop(config.grace)
    if not jobs.wait_stopped(max(0.0, deadline - time.monotonic())):
        log.warning("the running job did not reach a checkpoint within the grace period; it resumes from its last one")
    log.info("trainer service stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
