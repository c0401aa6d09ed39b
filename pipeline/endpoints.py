"""Where the services listen and the token to call them with: from PNEUMONIA_*_ADDRESS / _URL variables and
PNEUMONIA_AUTH_TOKEN, or from the local stack."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from shared.auth import ClientToken


@dataclass(frozen=True)
class ServiceEndpoints:
    """Where the services listen (from PNEUMONIA_*_ADDRESS / _URL variables; defaults: the local ports), and the
    orchestrator's token for the trainer, generator and analyzer (PNEUMONIA_AUTH_TOKEN; never in a repr)."""

    trainer: str = "127.0.0.1:50051"
    generator: str = "127.0.0.1:50052"
    analyzer: str = "127.0.0.1:50053"
    classifier_inference_url: str = "http://127.0.0.1:8080"
    classifier_management_url: str = "http://127.0.0.1:8081"
    classifier_grpc: str = "127.0.0.1:7070"
    classifier_key_file: Path | None = None
    token: str | None = field(default=None, repr=False)

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> ServiceEndpoints:
        env = {k: v for k, v in (os.environ if environ is None else environ).items() if v}
        d = cls()
        key_file = env.get("PNEUMONIA_CLASSIFIER_KEY_FILE")
        return cls(
            trainer=env.get("PNEUMONIA_TRAINER_ADDRESS", d.trainer),
            generator=env.get("PNEUMONIA_GENERATOR_ADDRESS", d.generator),
            analyzer=env.get("PNEUMONIA_ANALYZER_ADDRESS", d.analyzer),
            classifier_inference_url=env.get("PNEUMONIA_CLASSIFIER_INFERENCE_URL", d.classifier_inference_url),
            classifier_management_url=env.get("PNEUMONIA_CLASSIFIER_MANAGEMENT_URL", d.classifier_management_url),
            classifier_grpc=env.get("PNEUMONIA_CLASSIFIER_GRPC_ADDRESS", d.classifier_grpc),
            classifier_key_file=Path(key_file) if key_file else None,
            token=ClientToken.from_env(env).value(),
        )
