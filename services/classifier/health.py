"""The classifier container's health check: healthy only when TorchServe answers and every model it serves has a
worker that loaded it (Docker HEALTHCHECK, Kubernetes exec probe).

    python -m services.classifier.health

Reads the service's own settings (PNEUMONIA_CLASSIFIER_*: ports, and the workdir that holds key_file.json), then
1. GET /ping with the inference key: TorchServe answers "Healthy" only while every registered model has its
   minimum of workers running;
2. every registered model (management API, with the management key) has at least one worker READY, i.e. one whose
   handler loaded the model.
Before any model is registered, 1 is the frontend's answer; the service itself refuses to start when TorchServe's
worker cannot import the handler (services.classifier.torchserve.worker_import_problem). Prints one line with what
it found; exits 0 when healthy, 1 when not.
"""

from __future__ import annotations

import sys

from services.classifier.client import ClassifierClient, ClassifierError
from services.classifier.config import ClassifierConfig
from services.classifier.torchserve import TorchServe
from shared.errors import PneumoniaError

TIMEOUT_S = 5.0


def ready_workers(client: ClassifierClient, model: str) -> int:
    """How many workers of `model` (all its versions) are READY."""
    return sum(
        worker.get("status") == "READY" for version in client.describe(model) for worker in version.get("workers", [])
    )


def check(client: ClassifierClient) -> tuple[bool, str]:
    """(healthy, what was found) of the TorchServe that `client` talks to."""
    try:
        status = client.ping()
        if status != "Healthy":
            return False, f"ping: {status}"
        models = [entry["modelName"] for entry in client.list_models()]
        not_ready = [model for model in models if ready_workers(client, model) == 0]
    except (ClassifierError, PneumoniaError, OSError) as exc:
        return False, str(exc)
    if not_ready:
        return False, f"no READY worker for model(s) {', '.join(not_ready)}"
    return True, f"ping: Healthy; models with a READY worker: {', '.join(models) or 'none registered yet'}"


def main() -> int:
    try:
        config = ClassifierConfig.from_env()
    except PneumoniaError as exc:
        print(f"unhealthy: {exc}")
        return 1
    with TorchServe(config).client(timeout=TIMEOUT_S) as client:
        healthy, found = check(client)
    print(("healthy: " if healthy else "unhealthy: ") + found)
    return 0 if healthy else 1


if __name__ == "__main__":
    sys.exit(main())
