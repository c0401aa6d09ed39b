"""pipeline.tracking: an experiment's stored outputs logged to MLflow (an embedded sqlite store here) and each
strategy's served model registered, with its metrics, calibration and lineage."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
import urllib.request
import zipfile
from pathlib import Path

import pytest
import yaml
from mlflow import MlflowClient
from storage_server import free_port

from pipeline.tracking import (
    SERVED_ALIAS,
    Registered,
    TrackedRun,
    epoch_metrics,
    log_experiment,
    store_registered_archive,
    tracking_uri,
)
from shared.errors import ConfigError
from shared.storage import LocalStore

GAN_HISTORY = {
    "config": {"epochs": 3, "latent_dim": 100, "loss": "bce"},
    "epochs": [{"epoch": e, "loss_d": 1.0 - 0.1 * e, "loss_g": 2.0 + e} for e in range(3)],
}


def classifier_history(strategy: str) -> dict:
    epochs = [{"epoch": e, "train_loss": 0.7 - 0.1 * e, "val_auroc": 0.6 + 0.1 * e, "lr": 1e-3} for e in range(2)]
    config = {"arch": "resnet18", "use_synthetic": strategy != "baseline", "curriculum_schedule": [[0, 0.0], [1, 0.3]]}
    return {"strategy": strategy, "config": config, "folds": [{"fold": k, "epochs": epochs} for k in (1, 2)]}


def final_metrics(auroc: float) -> dict:
    return {
        "holdout": {"n": 40, "accuracy": 0.8, "sensitivity": 0.75, "specificity": 0.85, "auroc": auroc},
        "calibration": {"temperature": 1.3, "threshold": 0.42, "method": "youden"},
        "shifted": {
            "holdout": {"auroc": auroc},
            "shifts": {
                shift: {"auroc": auroc - drop, "accuracy": 0.7, "sensitivity": 0.8, "specificity": 0.6, "refused": 0.02}
                for shift, drop in (("gaussian_noise@3", 0.1), ("contrast_down@3", 0.2))
            },
        },
    }


def stored_run(store: LocalStore, run_id: str, strategies: dict[str, float]) -> TrackedRun:
    """What the services store for a run: GAN history and figures, each strategy's files and .mar, the analysis."""
    results = f"runs/{run_id}/"
    store.put_bytes("results", f"{results}gan/metrics/gan_training_history.json", json.dumps(GAN_HISTORY).encode())
    store.put_bytes("results", f"{results}gan/gan_images/epoch_001.png", b"png")
    archives = {}
    for strategy, auroc in strategies.items():
        metrics = f"{results}classifiers/metrics/{strategy}"
        store.put_bytes(
            "results", f"{metrics}_training_history.json", json.dumps(classifier_history(strategy)).encode()
        )
        store.put_bytes("results", f"{metrics}_final_metrics.json", json.dumps(final_metrics(auroc)).encode())
        store.put_bytes("results", f"{results}classifiers/figures/{strategy}_training_curves.png", b"png")
        store.put_bytes("results", f"{results}analysis/model_cards/{strategy}.md", f"# {strategy}".encode())
        archives[strategy] = store.put_bytes(
            "models", f"model-store/pneumonia-{strategy}.mar", f"mar {run_id}".encode()
        )
    store.put_bytes("results", f"{results}analysis/comparison_report.txt", b"report")
    return TrackedRun(
        run_id=run_id,
        params={"profile": "quick", "dataset": "phantom"},
        results=("results", results),
        archives=archives,
        lineage={"dataset": "s3://datasets/phantom/", "gan_checkpoint": "s3://models/runs/x/gan/g.pth#sha256=ab"},
        served=max(strategies, key=strategies.get),
    )


def test_epoch_metrics_name_a_classifiers_by_fold_and_a_gans_as_they_are() -> None:
    assert list(epoch_metrics(GAN_HISTORY))[:2] == [("loss_d", 1.0, 0), ("loss_g", 2.0, 0)]
    rows = list(epoch_metrics(classifier_history("baseline")))
    assert ("fold2/val_auroc", pytest.approx(0.7), 1) in rows and len(rows) == 2 * 2 * 3


def test_a_run_is_logged_and_its_models_registered(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "storage")
    for bucket in ("results", "models"):
        store.ensure_bucket(bucket)
    uri = tracking_uri(tmp_path, environ={})
    assert uri == f"sqlite:///{(tmp_path / 'mlflow.db').resolve()}"
    first = stored_run(store, "run-1", {"baseline": 0.80, "augmented": 0.90})
    logged = log_experiment(store, first, tmp_path)
    assert logged.uri == uri and logged.versions["augmented"] == Registered("pneumonia-augmented", "1")
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("pneumonia")
    assert experiment.artifact_location == (tmp_path / "mlartifacts").resolve().as_uri()
    (parent,) = client.search_runs([experiment.experiment_id], "tags.mlflow.runName = 'run-1'")
    assert parent.data.params == {"profile": "quick", "dataset": "phantom"}
    assert parent.data.tags["lineage.gan_checkpoint"].endswith("#sha256=ab")
    children = {
        run.info.run_name: run
        for run in client.search_runs([experiment.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    }
    assert set(children) == {"train-gan", "baseline", "augmented"}
    assert [m.value for m in client.get_metric_history(children["train-gan"].info.run_id, "loss_g")] == [2, 3, 4]
    augmented = children["augmented"]
    history = client.get_metric_history(augmented.info.run_id, "fold2/val_auroc")
    assert [(m.step, round(m.value, 3)) for m in history] == [(0, 0.6), (1, 0.7)]
    assert augmented.data.metrics["holdout_auroc"] == 0.90 and augmented.data.params["calibration_threshold"] == "0.42"
    assert augmented.data.metrics["shifted_auroc"] == pytest.approx(0.75)  # the mean over the shifts
    assert (
        augmented.data.metrics["shifted_refused"] == pytest.approx(0.02) and "shifted_f1" not in augmented.data.metrics
    )
    assert augmented.data.params["use_synthetic"] == "True" and augmented.data.params["arch"] == "resnet18"
    assert augmented.data.params["curriculum_schedule"] == "[[0, 0.0], [1, 0.3]]"
    assert children["train-gan"].data.params == {"epochs": "3", "latent_dim": "100", "loss": "bce"}
    model_artifacts = {f.path for f in client.list_artifacts(augmented.info.run_id, "model")}
    assert model_artifacts == {"model/augmented.md", "model/pneumonia-augmented.mar"}
    (version,) = client.search_model_versions("name = 'pneumonia-augmented'")
    assert version.tags["model_sha256"] == hashlib.sha256(b"mar run-1").hexdigest()
    assert version.tags["holdout_auroc"] == "0.9000" and version.tags["lineage.dataset"] == "s3://datasets/phantom/"
    assert client.get_model_version_by_alias("pneumonia-augmented", SERVED_ALIAS).version == version.version
    assert client.get_registered_model("pneumonia-baseline").aliases == {}
    # A later run adds a version of each; the alias moves to what TorchServe serves now.
    log_experiment(store, stored_run(store, "run-2", {"baseline": 0.95, "augmented": 0.90}), tmp_path)
    assert str(client.get_model_version_by_alias("pneumonia-baseline", SERVED_ALIAS).version) == "2"
    assert client.get_registered_model("pneumonia-augmented").aliases == {}
    assert len(client.search_model_versions("name = 'pneumonia-augmented'")) == 2


def test_logging_leaves_the_tracking_uri_of_the_process_as_it_was(tmp_path: Path, monkeypatch) -> None:
    """mlflow.set_tracking_uri also sets MLFLOW_TRACKING_URI: a second run in the same process must still log into
    its own work dir's store, not the first one's."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    store = LocalStore(tmp_path / "storage")
    for bucket in ("results", "models"):
        store.ensure_bucket(bucket)
    first, second = tmp_path / "first", tmp_path / "second"
    log_experiment(store, stored_run(store, "run-1", {"baseline": 0.8}), first)
    assert "MLFLOW_TRACKING_URI" not in os.environ
    assert log_experiment(store, stored_run(store, "run-2", {"baseline": 0.8}), second).uri == tracking_uri(second, {})
    (version,) = MlflowClient(tracking_uri(second, {})).search_model_versions("name = 'pneumonia-baseline'")
    assert version.tags["run_id"] == "run-2"


def work_dir_run(root: Path) -> None:
    """What the in-process experiment leaves under --work-dir (pipeline.plan.WorkDir), for two strategies."""
    results, models = root / "results", root / "models"
    for folder in (results / "metrics", results / "figures", results / "analysis" / "model_cards", models):
        folder.mkdir(parents=True, exist_ok=True)
    (results / "metrics" / "gan_training_history.json").write_text(json.dumps(GAN_HISTORY))
    (results / "figures" / "gan_loss_curve.png").write_bytes(b"png")
    for strategy, auroc in {"baseline": 0.8, "augmented": 0.9}.items():
        (results / "metrics" / f"{strategy}_training_history.json").write_text(json.dumps(classifier_history(strategy)))
        (results / "metrics" / f"{strategy}_final_metrics.json").write_text(json.dumps(final_metrics(auroc)))
        (results / "analysis" / "model_cards" / f"{strategy}.md").write_text(f"# {strategy}")
        (models / f"{strategy}_resnet18.pth").write_bytes(f"weights {strategy}".encode())
        (models / f"fold_1_{strategy}_resnet18.pth").write_bytes(b"a fold model, not the selected one")


def wait_for_http(url: str, process: subprocess.Popen, timeout: float = 90.0) -> None:
    """Until `url` answers 200; fail early if `process` exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, f"the server exited with {process.returncode}"
        try:
            with urllib.request.urlopen(url, timeout=2) as answer:
                if answer.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    raise AssertionError(f"{url} did not answer within {timeout} s")


def compose_mlflow_command(port: int, data: Path) -> list[str]:
    """docker-compose.yml's MLflow server command, on 127.0.0.1:`port` with its data under `data`."""
    compose = yaml.safe_load(Path("docker-compose.yml").read_text())
    command = []
    for word in compose["services"]["mlflow"]["command"]:
        word = word.replace("/var/lib/pneumonia/mlflow", str(data)).replace("--host=0.0.0.0", "--host=127.0.0.1")
        word = word.replace("--port=5000", f"--port={port}").replace("127.0.0.1:5000", f"127.0.0.1:{port}")
        command.append(word)
    return command


def test_pneumonia_track_logs_a_work_dir_to_the_compose_mlflow_server(tmp_path: Path) -> None:
    """`pneumonia track` (the Kubernetes track step) into a real MLflow server started as compose starts it: runs,
    metrics and registered versions in its database, the model files in its artifact store (uploaded through it)."""
    work, data = tmp_path / "work", tmp_path / "mlflow"
    work_dir_run(work)
    data.mkdir()
    port = free_port()
    command = compose_mlflow_command(port, data)
    assert command[:2] == ["mlflow", "server"]
    server = subprocess.Popen(
        [str(Path(sys.executable).parent / "mlflow"), *command[1:]],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
        env={**os.environ, "GIT_PYTHON_REFRESH": "quiet"},
    )
    uri = f"http://127.0.0.1:{port}"
    try:
        wait_for_http(f"{uri}/health", server)
        rc = subprocess.run(
            [sys.executable, "-m", "pipeline.cli", "track", "--work-dir", str(work), "--run-id", "k8s-run",
             "--profile", "quick", "--dataset", "phantom", "--tracking-uri", uri],
            capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert rc.returncode == 0, rc.stderr
        assert f"browse the MLflow server's UI at {uri}" in rc.stdout
        client = MlflowClient(uri)
        versions = {v.name: v for v in client.search_model_versions("")}
        assert set(versions) == {"pneumonia-baseline", "pneumonia-augmented"}
        assert versions["pneumonia-augmented"].tags["model_file"] == "augmented_resnet18.pth"
        assert versions["pneumonia-augmented"].tags["holdout_auroc"] == "0.9000"
        stored = sorted(p.name for p in (data / "artifacts").rglob("*.pth"))
        assert stored == ["augmented_resnet18.pth", "baseline_resnet18.pth"]  # selected models only, via the server
        (parent,) = client.search_runs(
            [client.get_experiment_by_name("pneumonia").experiment_id], "tags.mlflow.runName = 'k8s-run'"
        )
        assert parent.data.params["profile"] == "quick"
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_pneumonia_track_refuses_a_work_dir_without_models(tmp_path: Path, capsys) -> None:
    from pipeline.cli import main as pneumonia

    assert pneumonia(["track", "--work-dir", str(tmp_path), "--tracking-uri", f"sqlite:///{tmp_path}/m.db"]) == 2
    assert "no classifier models" in capsys.readouterr().err


def test_the_served_archive_names_its_registry_version(tmp_path: Path) -> None:
    """store_registered_archive: a copy of the .mar beside it with registry.json added, every other entry as it was;
    an archive whose bytes changed since it was registered is refused."""
    store = LocalStore(tmp_path / "storage")
    store.ensure_bucket("models")
    mar = tmp_path / "pneumonia-augmented.mar"
    with zipfile.ZipFile(mar, "w") as archive:
        archive.writestr("MAR-INF/MANIFEST.json", '{"model": {"modelVersion": "abc"}}')
        archive.writestr("augmented_resnet18.pth", b"weights")
    stored = store.put_file("models", "model-store/pneumonia-augmented.mar", mar)
    registered = Registered("pneumonia-augmented", "3")
    copy = store_registered_archive(store, stored, registered)
    assert copy.key == "model-store/pneumonia-augmented-v3.mar"
    store.get_file("models", copy.key, tmp_path / "copy.mar")
    with zipfile.ZipFile(tmp_path / "copy.mar") as archive:
        assert json.loads(archive.read("registry.json")) == {
            "name": "pneumonia-augmented",
            "version": "3",
            "uri": "models:/pneumonia-augmented/3",
        }
        assert archive.read("augmented_resnet18.pth") == b"weights"
        assert sorted(archive.namelist()) == ["MAR-INF/MANIFEST.json", "augmented_resnet18.pth", "registry.json"]
    store.put_bytes("models", "model-store/pneumonia-augmented.mar", b"another model")
    with pytest.raises(ConfigError, match="changed since it was registered"):
        store_registered_archive(store, stored, registered)
