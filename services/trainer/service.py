"""The trainer service's gRPC front end: pneumonia.v1.TrainerService over a JobManager (services.trainer.jobs).

Start* checks the request, records the job and returns it QUEUED at once; GetJob reads it; WatchJob streams it now
and after every change until it ends (or the client's deadline passes, or the service shuts down: UNAVAILABLE);
CancelJob cancels a queued job at once and stops a running one at its next checkpoint.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TypeVar

import grpc
from pneumonia_proto.v1 import trainer_pb2, trainer_pb2_grpc

from services.trainer.jobs import JobManager, ShuttingDownError
from shared.grpc_service import ensure_active, rpc_method

SERVICE_NAME = trainer_pb2.DESCRIPTOR.services_by_name["TrainerService"].full_name

T = TypeVar("T")


def _unless_stopping(context: grpc.ServicerContext, call: Callable[[], T]) -> T:
    """`call()`, ending the RPC with UNAVAILABLE when the service is shutting down."""
    try:
        return call()
    except ShuttingDownError as exc:
        context.abort(grpc.StatusCode.UNAVAILABLE, str(exc))
        raise AssertionError("unreachable: context.abort raises") from exc


class TrainerServicer(trainer_pb2_grpc.TrainerServiceServicer):
    """pneumonia.v1.TrainerService; errors become status codes through rpc_method (shared.grpc_service)."""

    def __init__(self, jobs: JobManager) -> None:
        self.jobs = jobs

    @rpc_method
    def StartGanJob(self, request: trainer_pb2.StartGanJobRequest, context: grpc.ServicerContext) -> trainer_pb2.Job:
        return _unless_stopping(context, lambda: self.jobs.submit(request))

    @rpc_method
    def StartClassifierJob(
        self, request: trainer_pb2.StartClassifierJobRequest, context: grpc.ServicerContext
    ) -> trainer_pb2.Job:
        return _unless_stopping(context, lambda: self.jobs.submit(request))

    @rpc_method
    def GetJob(self, request: trainer_pb2.GetJobRequest, context: grpc.ServicerContext) -> trainer_pb2.Job:
        return self.jobs.get(request.job_id)

    @rpc_method
    def WatchJob(
        self, request: trainer_pb2.WatchJobRequest, context: grpc.ServicerContext
    ) -> Iterator[trainer_pb2.Job]:
        updates = self.jobs.watch(request.job_id, check=lambda: ensure_active(context))
        while True:
            job = _unless_stopping(context, lambda: next(updates, None))
            if job is None:
                return
            yield job

    @rpc_method
    def CancelJob(self, request: trainer_pb2.CancelJobRequest, context: grpc.ServicerContext) -> trainer_pb2.Job:
        return self.jobs.cancel(request.job_id)
