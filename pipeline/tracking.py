"""MLflow tracking and model registry for an experiment run, through the services or in this process.

Everything a run produces lies in its folders (metrics per epoch, figures, sample grids, the report, the models);
once the experiment has ended, it is logged to MLflow from there:

    experiment "pneumonia", run <run id>        params (profile, dataset), lineage tags, the analysis as artifacts
      child run train-gan                        GAN losses per epoch, its figures and sample grids
      child run <strategy>                       per fold and epoch: losses, accuracy, AUROC; hold-out metrics;
                                                 calibration; figures; the model card; the model (.mar or .pth)
    registered model pneumonia-<strategy>        one version per run, tagged with its hold-out metrics, calibration
                                                 and lineage (dataset, GAN checkpoint, synthetic images); alias
                                                 "served" on the version the classifier serves

Through the services the files come from storage (`log_experiment`, the runs/<run>/ layout); in this process from
the work directory (`log_work_dir`, the seed's layout). MLFLOW_TRACKING_URI says where (an MLflow server in compose
and Kubernetes); unset, an embedded store: sqlite:///<work dir>/mlflow.db with artifacts in <work dir>/mlartifacts
(`mlflow ui --backend-store-uri ...`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import zipfile
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shared import layout
from shared.configs.classifier import STRATEGIES
from shared.errors import ConfigError
from shared.storage import ObjectRef, ObjectStore
from shared.storage.sync import download_prefix

log = logging.getLogger(__name__)

EXPERIMENT = "pneumonia"
SERVED_ALIAS = "served"
TRACKING_URI_VARIABLE = "MLFLOW_TRACKING_URI"
HOLDOUT_METRICS = ("accuracy", "sensitivity", "specificity", "auroc", "f1")
GAN_FIGURES = (layout.GAN_LOSS_FIGURE, layout.GAN_DIVERSITY_FIGURE, layout.GAN_COMPARISON_FIGURE)


@dataclass
class TrackedRun:
    """What an experiment run stored, and where: the orchestrator fills it as the steps end."""

    run_id: str
    params: dict[str, Any]
    results: tuple[str, str] = ("", "")  # through the services: (bucket, prefix) of runs/<run>/ in the results bucket
    archives: dict[str, ObjectRef] = field(default_factory=dict)  # strategy -> its .mar in the models bucket
    lineage: dict[str, str] = field(default_factory=dict)  # dataset, gan_checkpoint, synthetic ...
    served: str = ""  # the strategy the classifier serves


@dataclass
class RunFiles:
    """Where a run's files lie on this machine, in either layout."""

    gan_history: Path
    gan_figures: list[Path]
    gan_samples: Path  # folder of sample grids
    classifier_metrics: Path  # <strategy>_training_history.json, <strategy>_final_metrics.json
    classifier_figures: Path  # <strategy>_*.png
    analysis: Path  # the report, figures, model_cards/<strategy>.md
    models: dict[str, Path]  # strategy -> the file registered as its model (.mar through the services, else .pth)


@dataclass(frozen=True)
class Registered:
    """A version of a registered model: what the served archive names and its answers carry."""

    name: str  # pneumonia-<strategy>
    version: str

    @property
    def uri(self) -> str:
        """MLflow's models:/ URI of this version (mlflow.pyfunc / the registry UI resolve it)."""
        return f"models:/{self.name}/{self.version}"

    def entry(self) -> dict[str, str]:
        """What a served archive holds in layout.REGISTRY_FILE."""
        return {"name": self.name, "version": self.version, "uri": self.uri}


@dataclass(frozen=True)
class Logged:
    """Where a run was logged, and the version each strategy's model was registered as."""

    uri: str
    versions: dict[str, Registered]


def tracking_uri(work_dir: Path, environ: Mapping[str, str] | None = None) -> str:
    """MLFLOW_TRACKING_URI, else the embedded store in `work_dir`."""
    env = os.environ if environ is None else environ
    return env.get(TRACKING_URI_VARIABLE) or f"sqlite:///{(work_dir / 'mlflow.db').resolve()}"


@contextmanager
def tracking_to(uri: str) -> Iterator[None]:
    """MLflow's tracking URI and experiment for the block, then MLFLOW_TRACKING_URI as it was before
    (mlflow.set_tracking_uri also sets that variable, which would send a later run of this process here)."""
    import mlflow

    before = os.environ.get(TRACKING_URI_VARIABLE)
    mlflow.set_tracking_uri(uri)
    try:
        mlflow.set_experiment(EXPERIMENT)
        yield
    finally:
        mlflow.set_tracking_uri(before)  # None unsets the variable


def browse_hint(uri: str) -> str:
    """How a person looks at what was logged to `uri`: an embedded store through `mlflow ui`, a server directly."""
    if uri.startswith(("http://", "https://")):
        return f"browse the MLflow server's UI at {uri} (compose publishes it on http://127.0.0.1:5000)"
    return f"browse with `mlflow ui --backend-store-uri {uri}`"


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


def service_run_files(results: Path, models: dict[str, Path]) -> RunFiles:
    """The runs/<run>/ layout of the results bucket, downloaded to `results`."""
    gan = results / "gan"
    return RunFiles(
        gan_history=gan / "metrics" / layout.GAN_HISTORY,
        gan_figures=sorted((gan / "figures").glob("*.png")),
        gan_samples=gan / layout.GAN_SAMPLES_DIR,
        classifier_metrics=results / "classifiers" / "metrics",
        classifier_figures=results / "classifiers" / "figures",
        analysis=results / "analysis",
        models=models,
    )


def work_dir_files(root: Path) -> RunFiles:
    """The in-process experiment's layout under --work-dir (pipeline.plan.WorkDir): each strategy's selected model
    is models/<strategy>_<arch>.pth (the newest, should several architectures have run)."""
    results, models = root / "results", root / "models"
    selected = {}
    for strategy in STRATEGIES:
        found = sorted(models.glob(layout.strategy_model_name(strategy, "*")), key=lambda p: p.stat().st_mtime)
        if found:
            selected[strategy] = found[-1]
    return RunFiles(
        gan_history=results / "metrics" / layout.GAN_HISTORY,
        gan_figures=[results / "figures" / name for name in GAN_FIGURES if (results / "figures" / name).is_file()],
        gan_samples=results / layout.GAN_SAMPLES_DIR,
        classifier_metrics=results / "metrics",
        classifier_figures=results / "figures",
        analysis=results / "analysis",
        models=selected,
    )


def log_work_dir(root: Path, tracked: TrackedRun, uri: str | None = None) -> Logged:
    """Log an in-process experiment's work directory to MLflow and register each strategy's selected model."""
    files = work_dir_files(root)
    if not files.models:
        raise ConfigError(f"no classifier models (models/<strategy>_<arch>.pth) under {root}: nothing to register")
    return log_run(files, tracked, root, uri)


def log_experiment(store: ObjectStore, tracked: TrackedRun, work_dir: Path, uri: str | None = None) -> Logged:
    """Log a run the services stored to MLflow and register each strategy's .mar."""
    with tempfile.TemporaryDirectory(prefix="pneumonia-tracking-") as tmp:
        results = Path(tmp) / "results"
        bucket, prefix = tracked.results
        download_prefix(store, bucket, prefix, results)
        models = {}
        for strategy, archive in tracked.archives.items():
            local = Path(tmp) / "models" / strategy / Path(archive.key).name
            local.parent.mkdir(parents=True)
            store.get_file(archive.bucket, archive.key, local)
            models[strategy] = local
        return log_run(service_run_files(results, models), tracked, work_dir, uri)


def log_run(files: RunFiles, tracked: TrackedRun, work_dir: Path, uri: str | None = None) -> Logged:
    """Log a run's files to MLflow and register each strategy's model."""
    # MLflow records the git commit when it can; a container has no git: say nothing rather than three warnings.
    os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")
    import mlflow  # the pipeline's dependency only: the services never import it
    from mlflow import MlflowClient

    uri = uri or tracking_uri(work_dir)
    client = MlflowClient(uri)
    if client.get_experiment_by_name(EXPERIMENT) is None:
        artifacts = (work_dir / "mlartifacts").resolve().as_uri() if uri.startswith("sqlite:") else None
        client.create_experiment(EXPERIMENT, artifact_location=artifacts)
    with tracking_to(uri), mlflow.start_run(run_name=tracked.run_id) as parent:
        mlflow.log_params(tracked.params)
        mlflow.set_tags({"pneumonia.run_id": tracked.run_id, **{f"lineage.{k}": v for k, v in tracked.lineage.items()}})
        _log_gan(files)
        versions = {strategy: _log_strategy(client, files, tracked, strategy) for strategy in sorted(files.models)}
        if files.analysis.is_dir():
            mlflow.log_artifacts(str(files.analysis), artifact_path="analysis")
    log.info("logged run %s to MLflow (%s)", parent.info.run_id, uri)
    return Logged(uri, versions)


def _log_gan(files: RunFiles) -> None:
    import mlflow

    if not files.gan_history.is_file():
        return
    with mlflow.start_run(run_name="train-gan", nested=True):
        history = json.loads(files.gan_history.read_text())
        _log_config(history)
        _log_history(history)
        for figure in files.gan_figures:
            mlflow.log_artifact(str(figure), artifact_path="figures")
        if files.gan_samples.is_dir():
            mlflow.log_artifacts(str(files.gan_samples), artifact_path=layout.GAN_SAMPLES_DIR)


def _log_config(history: Mapping[str, Any]) -> None:
    """The step's config (what its history saved) as the run's params; lists and mappings as JSON."""
    import mlflow

    config = history.get("config") or {}
    mlflow.log_params(
        {k: v if isinstance(v, str | int | float | bool) or v is None else json.dumps(v) for k, v in config.items()}
    )


def _log_history(history: Mapping[str, Any]) -> None:
    import mlflow
    from mlflow.entities import Metric

    rows = [Metric(name, value, 0, epoch) for name, value, epoch in epoch_metrics(history)]
    run_id = mlflow.active_run().info.run_id
    for start in range(0, len(rows), 1000):  # MLflow takes at most 1000 metrics per batch
        mlflow.MlflowClient().log_batch(run_id, metrics=rows[start : start + 1000])


def shifted_means(shifted: Mapping[str, Any] | None) -> dict[str, float]:
    """The fold models' metrics under MedMNIST-C's shifts of the hold-out, averaged over the shifts: shifted_<name>."""
    shifts = list((shifted or {}).get("shifts", {}).values())
    names = (*HOLDOUT_METRICS, "refused")
    return {
        f"shifted_{name}": float(sum(s[name] for s in shifts) / len(shifts))
        for name in names
        if shifts and all(s.get(name) is not None for s in shifts)
    }


def _log_strategy(client: Any, files: RunFiles, tracked: TrackedRun, strategy: str) -> Registered:
    import mlflow

    metrics, figures = files.classifier_metrics, files.classifier_figures
    with mlflow.start_run(run_name=strategy, nested=True) as run:
        history, final = metrics / f"{strategy}_training_history.json", metrics / f"{strategy}_final_metrics.json"
        if history.is_file():
            saved = json.loads(history.read_text())
            _log_config(saved)
            _log_history(saved)
        found = json.loads(final.read_text()) if final.is_file() else {}
        holdout = {f"holdout_{k}": v for k, v in (found.get("holdout") or {}).items() if k in HOLDOUT_METRICS}
        calibration = found.get("calibration") or {}
        mlflow.log_metrics(holdout | shifted_means(found.get("shifted")))
        mlflow.log_params(
            {
                "strategy": strategy,
                **{f"calibration_{k}": calibration.get(k) for k in ("temperature", "threshold", "method")},
            }
        )
        for figure in sorted(figures.glob(f"{strategy}_*.png")) if figures.is_dir() else []:
            mlflow.log_artifact(str(figure), artifact_path="figures")
        card = files.analysis / layout.MODEL_CARDS_DIR / f"{strategy}.md"
        if card.is_file():
            mlflow.log_artifact(str(card), artifact_path="model")
        model = files.models[strategy]
        mlflow.log_artifact(str(model), artifact_path="model")
        name = f"pneumonia-{strategy}"
        if not client.search_registered_models(filter_string=f"name = '{name}'"):
            client.create_registered_model(name, description=f"The {strategy} strategy's served classifier")
        tags = {
            "run_id": tracked.run_id,
            "model_file": model.name,
            "model_sha256": hashlib.sha256(model.read_bytes()).hexdigest(),
            **{k: f"{v:.4f}" for k, v in holdout.items()},
            **{f"calibration_{k}": str(calibration.get(k)) for k in ("temperature", "threshold")},
            **{f"lineage.{k}": v for k, v in tracked.lineage.items()},
        }
        version = client.create_model_version(
            name, source=mlflow.get_artifact_uri("model"), run_id=run.info.run_id, tags=tags
        )
        if strategy == tracked.served:
            client.set_registered_model_alias(name, SERVED_ALIAS, version.version)
        elif SERVED_ALIAS in client.get_registered_model(name).aliases:  # the classifier serves another model now
            client.delete_registered_model_alias(name, SERVED_ALIAS)
        log.info("registered %s version %s", name, version.version)
        return Registered(name, str(version.version))


def with_registry_entry(archive: Path, registered: Registered, out: Path) -> Path:
    """A copy of the model archive (.mar, a zip) at `out` that also holds layout.REGISTRY_FILE, naming the registry
    version it is: the served model's handler puts that version in every answer."""
    with zipfile.ZipFile(archive) as source, zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as copy:
        for item in source.infolist():
            if item.filename != layout.REGISTRY_FILE:
                copy.writestr(item, source.read(item))
        copy.writestr(layout.REGISTRY_FILE, json.dumps(registered.entry(), indent=2) + "\n")
    return out


def store_registered_archive(store: ObjectStore, archive: ObjectRef, registered: Registered) -> ObjectRef:
    """The stored archive with its registry entry, as model-store/<registered name>-v<version>.mar beside it."""
    key = f"{archive.key.rsplit('/', 1)[0]}/{registered.name}-v{registered.version}.mar"
    with tempfile.TemporaryDirectory(prefix="pneumonia-registry-") as tmp:
        local = store.get_file(archive.bucket, archive.key, Path(tmp) / "archive.mar")  # verified by its digest
        if archive.sha256 and local.sha256 != archive.sha256:
            raise ConfigError(f"{archive.uri} changed since it was registered (sha256 {local.sha256[:12]})")
        stamped = with_registry_entry(Path(tmp) / "archive.mar", registered, Path(tmp) / "registered.mar")
        return store.put_file(archive.bucket, key, stamped)
