"""`pneumonia experiment --via-services --local-services`: every service as a real process, driven through its API.

The services are not mocked: trainer, generator, analyzer and TorchServe run as `python -m services.<name>` on
127.0.0.1 with one LocalStore, exactly as `make experiment-local` starts them.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
from mlflow import MlflowClient

from pipeline.tracking import SERVED_ALIAS
from shared.configs.classifier import STRATEGIES
from shared.datasets import load_dataset
from shared.splits import develop_and_holdout
from shared.synthetic import read_layout

TINY = [
    "--profile", "quick", "--dataset", "phantom", "--cpu",
    "--gan-args", "--epochs 1 --max-images 120 --batch-size 32 --feature-maps-g 16 --feature-maps-d 16",
    "--generate-args", "--num-images 48 --batch-size 32",
    "--classifier-args", "--epochs 1 --k-folds 2 --max-images 100 --image-size 16 --batch-size 16",
    "--analyze-args", "--num-ssim-real 8 --num-ssim-synth 16 --num-gradcam-samples 1",
]  # fmt: skip
SERVICES = ("trainer", "generator", "analyzer", "classifier")


def experiment(phantom_dir: Path, work: Path, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "pipeline.cli", "experiment", "--via-services", "--local-services",
        "--data-dir", str(phantom_dir), "--work-dir", str(work), *TINY, *extra,
    ]  # fmt: skip


def stopped_cleanly(log: str) -> dict[str, str]:
    """service -> exit code, from the local stack's 'stopped <service> (exit code N)' lines."""
    return dict(re.findall(r"stopped (\w+) \(exit code (-?\d+)\)", log))


def run_to_the_end(command: list[str], timeout_s: float) -> subprocess.CompletedProcess:
    """Run the experiment; past `timeout_s`, Ctrl-C its process group (the local stack then stops every service it
    started) and fail, so that a slow run leaves no service running behind the test."""
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        stdout, stderr = process.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGINT)
        try:
            stdout, stderr = process.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            stdout, stderr = process.communicate()
        pytest.fail(f"the experiment took over {timeout_s:.0f} s and was stopped:\n{stderr[-3000:]}")
    return subprocess.CompletedProcess(command, process.returncode, stdout, stderr)


@pytest.mark.slow
def test_the_quick_experiment_runs_through_the_services(phantom_dir: Path, tmp_path: Path) -> None:
    work = tmp_path / "work"
    result = run_to_the_end(
        experiment(phantom_dir, work, "--run-id", "e2e", "--synthesize", "balanced", "--repeats", "2"), 600
    )
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout

    # Every step's result is in storage, under the run's prefix.
    storage = work / "storage"
    assert (storage / "models/runs/e2e/gan/generator_final.pth").is_file()
    metrics = storage / "results/runs/e2e/classifiers/metrics"
    develop, holdout = develop_and_holdout(load_dataset("phantom", phantom_dir))
    for strategy in STRATEGIES:
        final = json.loads((metrics / f"{strategy}_final_metrics.json").read_text())
        assert final["holdout"]["n"] == len(holdout)  # the real hold-out, never a synthetic image
        assert (storage / f"models/model-store/pneumonia-{strategy}.mar").is_file()
    # --repeats 2: a second seed of every strategy in repeat-1/ (its own folds), without a model archive of its own
    for strategy in STRATEGIES:
        first = json.loads((metrics / f"{strategy}_cv_summary.json").read_text())["folds"]
        second = json.loads((metrics / "repeat-1" / f"{strategy}_cv_summary.json").read_text())["folds"]
        assert len(second) == 2 and second != first
        assert (storage / f"models/runs/e2e/classifiers/repeat-1/{strategy}_resnet18.pth").is_file()
    # each strategy's archive, and the served one's copy that names its MLflow registry version (pipeline.tracking)
    archives = sorted(p.name for p in (storage / "models/model-store").glob("*.mar"))
    served = [name for name in archives if name.endswith("-v1.mar")]
    assert len(served) == 1 and archives == sorted([*(f"pneumonia-{s}.mar" for s in STRATEGIES), *served])
    with zipfile.ZipFile(storage / "models/model-store" / served[0]) as archive:
        entry = json.loads(archive.read("registry.json"))
    assert entry["uri"] == f"models:/{served[0].removesuffix('-v1.mar')}/1"
    # --synthesize balanced: the generator was called once per class, the two results merged into one pool.
    augmented = json.loads((metrics / "augmented_final_metrics.json").read_text())
    assert augmented["class_mix"]["synthetic"] == {"normal": 2 * 24, "pneumonia": 2 * 24}  # 2 folds x 24 each
    merged = storage / "synthetic/runs/e2e/synthetic"
    shards = read_layout(merged).shards  # the generator stores shards (one object per up to 1024 images), not PNGs
    assert [(row.shard, row.count) for row in shards] == [
        ("synthetic_normal_000000-000023.npz", 24),
        ("synthetic_pneumonia_000000-000023.npz", 24),
    ]
    summary = json.loads((storage / "results/runs/e2e/analysis/analysis_summary.json").read_text())
    assert tuple(summary["strategies"]) == STRATEGIES
    assert summary["tstr"] is not None  # the conditional generator makes a labelled set
    assert summary["repeats"]["repeats"] == 2  # the analysis paired the strategies by seed
    assert summary["holdout_tests"]["strategies"]["baseline"]["fold_spread"]["auroc"]["n_models"] == 2 * 2
    assert "Repeats: 2 seeds" in (storage / "results/runs/e2e/analysis/comparison_report.txt").read_text()
    assert json.loads((storage / "results/runs/e2e/experiment_timings.json").read_text())["total"] > 0

    # TorchServe answered the same for REST and gRPC on four hold-out images.
    rows = [line.split() for line in out.splitlines() if line.startswith("phantom-")]
    assert len(rows) == 4
    for row in rows:
        rest, grpc = " ".join(row[2:4]), " ".join(row[4:6])
        assert rest == grpc and row[1] in ("normal", "pneumonia")
    assert "Hold-out test metrics" in out and "Report: " in out

    # MLflow (embedded store in the work dir): the run with a child per step, every strategy's model registered,
    # the served one under the alias "served".
    uri = f"sqlite:///{(work / 'mlflow.db').resolve()}"
    assert f"mlflow ui --backend-store-uri {uri}" in out
    client = MlflowClient(uri)
    (parent,) = client.search_runs(
        [client.get_experiment_by_name("pneumonia").experiment_id], "tags.mlflow.runName = 'e2e'"
    )
    children = client.search_runs([parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    assert {run.info.run_name for run in children} == {"train-gan", *STRATEGIES}
    served = [name for name in STRATEGIES if SERVED_ALIAS in client.get_registered_model(f"pneumonia-{name}").aliases]
    assert len(served) == 1 and f"the {served[0]} model" in out
    # ... and TorchServe's answers (REST and gRPC) name that registry version
    version = client.get_model_version_by_alias(f"pneumonia-{served[0]}", SERVED_ALIAS).version
    (line,) = [line for line in out.splitlines() if line.startswith("model_version ")]
    assert line.endswith(f" = models:/pneumonia-{served[0]}/{version}"), line

    # ... and every service was stopped and exited cleanly.
    assert stopped_cleanly(result.stderr) == dict.fromkeys(SERVICES, "0")


@pytest.mark.slow
def test_ctrl_c_stops_every_service_cleanly(phantom_dir: Path, tmp_path: Path) -> None:
    work = tmp_path / "work"
    argv = experiment(phantom_dir, work, "--gan-args=--epochs 200")  # still training when interrupted
    # Ctrl-C reaches the child even when this test runs in a background job, whose children inherit an ignored SIGINT.
    default_sigint = lambda: signal.signal(signal.SIGINT, signal.SIG_DFL)  # noqa: E731
    process = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=default_sigint
    )
    try:
        deadline = time.monotonic() + 240
        log = work / "logs" / "trainer.log"
        while time.monotonic() < deadline:  # wait until the GAN job has finished an epoch
            if log.is_file() and '"epoch 1/' in log.read_text(errors="replace"):
                break
            assert process.poll() is None, process.communicate()[1][-3000:]
            time.sleep(0.5)
        else:
            pytest.fail("the GAN job never got going")
        os.kill(process.pid, signal.SIGINT)
        _, stderr = process.communicate(timeout=180)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 130, stderr[-3000:]
    assert "interrupted" in stderr
    assert stopped_cleanly(stderr) == dict.fromkeys(SERVICES, "0")
