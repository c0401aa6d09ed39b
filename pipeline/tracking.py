"""MLflow tracking and model registry for an experiment run through the services.

The services store everything a run produces (metrics per epoch, figures, sample grids, the report, the models);
once the experiment has ended, the orchestrator logs it to MLflow from there:

    experiment "pneumonia", run <run id>        params (profile, dataset), lineage tags, the analysis as artifacts
      child run train-gan                        GAN losses per epoch, its figures and sample grids
      child run <strategy>                       per fold and epoch: losses, accuracy, AUROC; hold-out metrics;
                                                 calibration; figures; the model card; the served .mar
    registered model pneumonia-<strategy>        one version per run, tagged with its hold-out metrics, calibration
                                                 and lineage (dataset, GAN checkpoint, synthetic images); alias
                                                 "served" on the version TorchServe serves

MLFLOW_TRACKING_URI says where (an MLflow server in compose and Kubernetes); unset, an embedded store:
sqlite:///<work dir>/mlflow.db with artifacts in <work dir>/mlartifacts (`mlflow ui --backend-store-uri ...`).
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shared.storage import ObjectRef, ObjectStore
from shared.storage.sync import download_prefix

log = logging.getLogger(__name__)

EXPERIMENT = "pneumonia"
SERVED_ALIAS = "served"
HOLDOUT_METRICS = ("accuracy", "sensitivity", "specificity", "auroc", "f1")


@dataclass
class TrackedRun:
    """What an experiment run stored, and where: the orchestrator fills it as the steps end."""

    run_id: str
    params: dict[str, Any]
    results: tuple[str, str]  # (bucket, prefix) of runs/<run>/ in the results bucket
    archives: dict[str, ObjectRef] = field(default_factory=dict)  # strategy -> its .mar in the models bucket
    lineage: dict[str, str] = field(default_factory=dict)  # dataset, gan_checkpoint, synthetic ...
    served: str = ""  # the strategy TorchServe serves


def tracking_uri(work_dir: Path, environ: Mapping[str, str] | None = None) -> str:
    """MLFLOW_TRACKING_URI, else the embedded store in `work_dir`."""
    env = os.environ if environ is None else environ
    return env.get("MLFLOW_TRACKING_URI") or f"sqlite:///{(work_dir / 'mlflow.db').resolve()}"


def epoch_metrics(history: Mapping[str, Any]) -> Iterable[tuple[str, float, int]]:
    """(name, value, epoch) of a training history: a classifier's per fold (fold<k>/<name>), a GAN's as it is."""
    folds = history.get("folds")
    if folds is None:  # the GAN's history: {"epochs": [{"epoch": e, "loss_d": ...}, ...]}
        folds = [{"fold": None, "epochs": history.get("epochs", [])}]
    for fold in folds:
        prefix = "" if fold.get("fold") is None else f"fold{fold['fold']}/"
        for row in fold.get("epochs", []):
            for name, value in row.items():
                if name != "epoch" and isinstance(value, int | float) and not isinstance(value, bool):
                    yield f"{prefix}{name}", float(value), int(row.get("epoch", 0))


def log_experiment(store: ObjectStore, tracked: TrackedRun, work_dir: Path, uri: str | None = None) -> str:
    """Log the run to MLflow and register each strategy's model; return where to browse it."""
    # MLflow records the git commit when it can; a container has no git: say nothing rather than three warnings.
    os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")
    import mlflow  # the pipeline's dependency only: the services never import it
    from mlflow import MlflowClient

    uri = uri or tracking_uri(work_dir)
    mlflow.set_tracking_uri(uri)
    client = MlflowClient(uri)
    if client.get_experiment_by_name(EXPERIMENT) is None:
        artifacts = (work_dir / "mlartifacts").resolve().as_uri() if uri.startswith("sqlite:") else None
        client.create_experiment(EXPERIMENT, artifact_location=artifacts)
    mlflow.set_experiment(EXPERIMENT)
    with tempfile.TemporaryDirectory(prefix="pneumonia-tracking-") as tmp:
        results = Path(tmp) / "results"
        bucket, prefix = tracked.results
        download_prefix(store, bucket, prefix, results)
        with mlflow.start_run(run_name=tracked.run_id) as parent:
            mlflow.log_params(tracked.params)
            mlflow.set_tags(
                {"pneumonia.run_id": tracked.run_id, **{f"lineage.{k}": v for k, v in tracked.lineage.items()}}
            )
            _log_gan(results / "gan")
            for strategy in sorted(tracked.archives):
                _log_strategy(client, store, tracked, strategy, results / "classifiers", Path(tmp) / strategy)
            if (results / "analysis").is_dir():
                mlflow.log_artifacts(str(results / "analysis"), artifact_path="analysis")
        log.info("logged run %s to MLflow (%s)", parent.info.run_id, uri)
    return uri


def _log_gan(gan: Path) -> None:
    import mlflow

    if not gan.is_dir():
        return
    with mlflow.start_run(run_name="train-gan", nested=True):
        history = gan / "metrics" / "gan_training_history.json"
        if history.is_file():
            _log_history(json.loads(history.read_text()))
        for folder in ("figures", "gan_images"):
            if (gan / folder).is_dir():
                mlflow.log_artifacts(str(gan / folder), artifact_path=folder)


def _log_history(history: Mapping[str, Any]) -> None:
    import mlflow
    from mlflow.entities import Metric

    rows = [Metric(name, value, 0, epoch) for name, value, epoch in epoch_metrics(history)]
    run_id = mlflow.active_run().info.run_id
    for start in range(0, len(rows), 1000):  # MLflow takes at most 1000 metrics per batch
        mlflow.MlflowClient().log_batch(run_id, metrics=rows[start : start + 1000])


def _log_strategy(
    client: Any, store: ObjectStore, tracked: TrackedRun, strategy: str, classifiers: Path, tmp: Path
) -> None:
    import mlflow

    metrics, figures = classifiers / "metrics", classifiers / "figures"
    with mlflow.start_run(run_name=strategy, nested=True) as run:
        history, final = metrics / f"{strategy}_training_history.json", metrics / f"{strategy}_final_metrics.json"
        if history.is_file():
            _log_history(json.loads(history.read_text()))
        found = json.loads(final.read_text()) if final.is_file() else {}
        holdout = {f"holdout_{k}": v for k, v in (found.get("holdout") or {}).items() if k in HOLDOUT_METRICS}
        calibration = found.get("calibration") or {}
        mlflow.log_metrics(holdout)
        mlflow.log_params(
            {
                "strategy": strategy,
                **{f"calibration_{k}": calibration.get(k) for k in ("temperature", "threshold", "method")},
            }
        )
        for figure in sorted(figures.glob(f"{strategy}_*.png")) if figures.is_dir() else []:
            mlflow.log_artifact(str(figure), artifact_path="figures")
        card = classifiers.parent / "analysis" / "model_cards" / f"{strategy}.md"
        if card.is_file():
            mlflow.log_artifact(str(card), artifact_path="model")
        archive = tracked.archives[strategy]
        tmp.mkdir(parents=True, exist_ok=True)
        local = store.get_file(archive.bucket, archive.key, tmp / Path(archive.key).name)
        mlflow.log_artifact(str(tmp / Path(archive.key).name), artifact_path="model")
        name = f"pneumonia-{strategy}"
        if not client.search_registered_models(filter_string=f"name = '{name}'"):
            client.create_registered_model(name, description=f"The {strategy} strategy's served classifier (.mar)")
        tags = {
            "run_id": tracked.run_id,
            "archive_sha256": local.sha256,
            **{k: f"{v:.4f}" for k, v in holdout.items()},
            **{f"calibration_{k}": str(calibration.get(k)) for k in ("temperature", "threshold")},
            **{f"lineage.{k}": v for k, v in tracked.lineage.items()},
        }
        version = client.create_model_version(
            name, source=mlflow.get_artifact_uri("model"), run_id=run.info.run_id, tags=tags
        )
        if strategy == tracked.served:
            client.set_registered_model_alias(name, SERVED_ALIAS, version.version)
        elif SERVED_ALIAS in client.get_registered_model(name).aliases:  # TorchServe serves another model now
            client.delete_registered_model_alias(name, SERVED_ALIAS)
        log.info("registered %s version %s", name, version.version)
