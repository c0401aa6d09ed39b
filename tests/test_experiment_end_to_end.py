"""The whole quick experiment on phantom data, shrunk by step overrides: every output present and valid."""

from __future__ import annotations

import json

import pytest
from mlflow import MlflowClient

from pipeline.cli import main as pneumonia
from shared.configs.classifier import STRATEGIES
from shared.datasets import load_dataset
from shared.splits import develop_and_holdout
from shared.synthetic import load_synthetic, read_layout


@pytest.mark.slow
def test_quick_experiment_on_phantom_data(phantom_dir, tmp_path, capsys):
    work = tmp_path / "work"
    rc = pneumonia(
        [
            "experiment", "--profile", "quick", "--dataset", "phantom", "--data-dir", str(phantom_dir),
            "--work-dir", str(work), "--cpu",
            "--gan-args", "--epochs 2 --max-images 120 --batch-size 32 --feature-maps-g 16 --feature-maps-d 16",
            "--generate-args", "--num-images 96 --batch-size 32",
            # light augmentation: strong's crops and noise take 4 epochs on 16 px phantoms below the bar checked here
            "--classifier-args", "--epochs 4 --k-folds 2 --max-images 100000 --image-size 16 --batch-size 16 "
            "--scheduler none --lr 0.001 --curriculum-schedule '0:0.0, 1:0.15, 3:0.3' --augmentation light",
            "--analyze-args", "--num-ssim-real 8 --num-ssim-synth 16 --num-gradcam-samples 1",
        ]
    )  # fmt: skip
    assert rc == 0
    out = capsys.readouterr().out
    assert "Hold-out test metrics" in out and "comparison_report.txt" in out

    # GAN and synthesis outputs
    assert (work / "models/gan/generator_final.pth").is_file()
    synthetic = load_synthetic(work / "data/synthetic")  # .npz shards, each checked against its sha256
    assert read_layout(work / "data/synthetic").layout == "shards" and len(synthetic) == 96
    assert set(synthetic.labels.tolist()) == {1}  # the quick profile synthesizes the minority class, pneumonia here
    synthetic.load(0)

    # Every strategy: models, metrics, and evaluation sets made of real images only
    develop, holdout = develop_and_holdout(load_dataset("phantom", phantom_dir))
    metrics = work / "results/metrics"
    for strategy in STRATEGIES:
        assert (work / f"models/{strategy}_resnet18.pth").is_file()
        assert (work / f"models/fold_1_{strategy}_resnet18.pth").is_file()
        history = json.loads((metrics / f"{strategy}_training_history.json").read_text())
        assert len(history["folds"]) == 2 and all(len(fold["epochs"]) == 4 for fold in history["folds"])
        cv = json.loads((metrics / f"{strategy}_cv_summary.json").read_text())
        final = json.loads((metrics / f"{strategy}_final_metrics.json").read_text())
        # the hold-out is exactly the real hold-out set: no synthetic image was scored
        assert final["holdout"]["n"] == len(holdout)
        assert all(m["n"] == len(holdout) for m in final["holdout_per_fold"])
        # validation folds partition the real development subset: no synthetic image among them
        assert sum(fold["n"] for fold in cv["folds"]) == final["n_develop"] == len(develop)
    ratios = [e["synthetic_ratio"] for e in history["folds"][0]["epochs"]]
    assert ratios[0] == 0.0 and ratios[-1] == pytest.approx(0.3, abs=0.02)

    # --synthesize minority (the default): phantom's development images are 40% pneumonia, the minority, so the
    # conditional GAN made pneumonia images only; each of the 2 training folds of augmented adds all 96.
    augmented = json.loads((metrics / "augmented_final_metrics.json").read_text())
    assert augmented["class_mix"]["synthetic"] == {"normal": 0, "pneumonia": 2 * 96}
    real = augmented["class_mix"]["real"]
    assert real["pneumonia"] < real["normal"]
    assert augmented["class_mix"]["after"]["pneumonia"] == real["pneumonia"] + 2 * 96
    # The matched-compute control: augmented's images per epoch, every one of them real.
    matched = json.loads((metrics / "baseline-matched_training_history.json").read_text())
    for entry in matched["folds"][0]["epochs"]:
        assert entry["n_resampled_real"] == 96 and entry["n_synthetic"] == 0

    # The baseline learned the phantom task: its fold models are well above chance (AUROC 0.5) on the hold-out
    baseline = json.loads((metrics / "baseline_final_metrics.json").read_text())
    assert baseline["holdout_summary"]["average"]["auroc"] > 0.65

    # Analysis outputs
    analysis = work / "results/analysis"
    report = (analysis / "comparison_report.txt").read_text()
    assert all(strategy in report for strategy in STRATEGIES)
    assert "Class mix of the training folds" in report
    assert json.loads((analysis / "analysis_summary.json").read_text())["tstr"] is not None
    for name in ("cv_comparison.png", "ssim_distribution.png", "analysis_summary.json"):
        assert (analysis / name).is_file(), name
    assert list(analysis.glob("gradcam_*.png"))

    # MLflow: the run logged in the embedded store, each strategy's selected model registered
    uri = f"sqlite:///{(work / 'mlflow.db').resolve()}"
    assert f"mlflow ui --backend-store-uri {uri}" in out
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("pneumonia").experiment_id], "", max_results=50)
    (parent,) = [run for run in runs if "mlflow.parentRunId" not in run.data.tags]
    children = client.search_runs(
        [parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'", max_results=10
    )
    assert {run.info.run_name for run in children} == {"train-gan", *STRATEGIES}
    gan = next(run for run in children if run.info.run_name == "train-gan")
    assert len(client.get_metric_history(gan.info.run_id, "loss_d")) == 2  # one per GAN epoch
    for strategy in STRATEGIES:
        (version,) = client.search_model_versions(f"name = 'pneumonia-{strategy}'")
        assert version.tags["model_file"] == f"{strategy}_resnet18.pth"
        assert float(version.tags["holdout_auroc"]) == pytest.approx(
            json.loads((work / f"results/metrics/{strategy}_final_metrics.json").read_text())["holdout"]["auroc"],
            abs=1e-4,
        )
