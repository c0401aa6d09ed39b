"""`pneumonia analyze-results` end to end on a tiny phantom setup, and with inputs missing."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline.cli import main
from shared.checkpoints import save_checkpoint
from shared.datasets import NORMAL, PNEUMONIA, load_dataset
from shared.datasets.phantom import write_phantom_dataset
from shared.models.classifier import build_classifier, classifier_config, save_classifier
from shared.models.dcgan import Generator
from shared.predictions import write_holdout_predictions
from shared.splits import develop_and_holdout
from shared.synthetic import ManifestRow, write_manifest

STRATEGIES = ("baseline", "augmented", "curriculum")
# per-fold hold-out accuracy: augmented clearly better, curriculum the same as the baseline give or take noise
HOLDOUT_ACCURACY = {
    "baseline": [0.70, 0.74, 0.72],
    "augmented": [0.80, 0.85, 0.81],
    "curriculum": [0.71, 0.73, 0.73],
}
FIGURES = (
    "comparison_loss.png",
    "comparison_accuracy.png",
    "comparison_synthetic_ratio.png",
    "cv_comparison.png",
    "ssim_distribution.png",
    "memorization_closest_pairs.png",
    "gradcam_comparison.png",
)


def write_metrics(metrics_dir: Path, strategy: str) -> None:
    """train-classifier's three JSON files for a 3-fold run with the given hold-out accuracies."""
    folds = [
        {"fold": i + 1, "accuracy": acc, "precision": acc, "recall": acc, "f1": acc, "auroc": acc + 0.05,
         "sensitivity": acc, "specificity": acc, "confusion_matrix": [[5, 1], [1, 5]], "n": 12, "n_positive": 6}
        for i, acc in enumerate(HOLDOUT_ACCURACY[strategy])
    ]  # fmt: skip
    summary = {
        "average": {name: float(np.mean([f[name] for f in folds])) for name in ("accuracy", "auroc")},
        "std_dev": {name: float(np.std([f[name] for f in folds], ddof=1)) for name in ("accuracy", "auroc")},
        "ci95": {name: [min(f[name] for f in folds), max(f[name] for f in folds)] for name in ("accuracy", "auroc")},
    }
    epochs = [
        {"epoch": e, "train_loss": 0.7 - 0.1 * e, "train_acc": 0.6 + 0.1 * e, "val_loss": 0.8 - 0.1 * e,
         "val_acc": 0.55 + 0.1 * e, "val_auroc": 0.6, "synthetic_ratio": 0.0 if strategy == "baseline" else 0.2 * e,
         "lr": 0.001, "seconds": 1.0}
        for e in range(2)
    ]  # fmt: skip
    files = {
        "training_history": {"strategy": strategy, "config": {}, "folds": [{"fold": 1, "epochs": epochs}]},
        "cv_summary": {"strategy": strategy, "folds": folds, **summary},
        "final_metrics": {
            "strategy": strategy, "model": f"{strategy}_resnet18.pth", "selected_fold": 1, "holdout": folds[0],
            "holdout_per_fold": folds, "holdout_summary": summary, "class_balance": "weighted-loss",
            "n_train_real": 100, "n_synthetic_pool": 17, "dataset": "phantom", "arch": "resnet18",
        },
    }  # fmt: skip
    metrics_dir.mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        (metrics_dir / f"{strategy}_{name}.json").write_text(json.dumps(content))
    write_predictions(metrics_dir, strategy)


def write_predictions(metrics_dir: Path, strategy: str) -> None:
    """train-classifier's per-image hold-out predictions of 3 fold models on 300 images: the same labels and image
    difficulty for every strategy, the augmented models' classes much further apart."""
    rng = np.random.default_rng(0)
    labels = (rng.random(300) < 0.7).astype(int)
    difficulty = rng.normal(size=300)
    own = np.random.default_rng(len(strategy))
    separation = 4.5 if strategy == "augmented" else 2.0
    folds = [
        (k + 1, 1 / (1 + np.exp(-(separation * (labels - 0.5) + difficulty + 0.6 * own.normal(size=300)))), 0.5)
        for k in range(3)
    ]
    images = [f"patient-{i:03d}" for i in range(300)]
    write_holdout_predictions(metrics_dir / f"{strategy}_holdout_predictions.csv", images, labels, folds)


def write_generator(path: Path, conditional: bool) -> None:
    """An untrained tiny DCGAN generator checkpoint, as train-gan writes it."""
    torch.manual_seed(0)
    generator = Generator(latent_dim=8, feature_maps=4, channels=1, image_size=16, num_classes=2 if conditional else 0)
    config = {
        "latent_dim": 8,
        "feature_maps_g": 4,
        "num_channels": 1,
        "image_size": 16,
        "num_classes": 2 if conditional else 0,
        "conditional": conditional,
        "label": None if conditional else PNEUMONIA,
    }
    save_checkpoint(path, "dcgan-generator", config, state_dict=generator.eval().state_dict())


@pytest.fixture(scope="module")
def setup(phantom_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Metrics, three resnet18 checkpoints, a conditional generator and a synthetic folder: 16 phantom images of
    other patients plus one exact copy of a development-set pneumonia image."""
    work = tmp_path_factory.mktemp("analysis")
    for strategy in STRATEGIES:
        write_metrics(work / "metrics", strategy)
        torch.manual_seed(len(strategy))
        model = build_classifier("resnet18", 2, 1, 16, weights="none")
        save_classifier(
            work / "models" / f"{strategy}_resnet18.pth", model, classifier_config("resnet18", 1, 16, strategy, "none")
        )
    write_generator(work / "models" / "gan" / "generator_final.pth", conditional=True)

    others = write_phantom_dataset(work / "others", num_patients=16, image_size=32, positive_fraction=0.5, seed=7)
    synthetic = work / "synthetic"
    synthetic.mkdir()
    rows = []
    for index, source in enumerate(sorted((others / "Training" / "Images").glob("*.png"))):
        name = f"synthetic_pneumonia_{index:06d}.png"
        shutil.copy(source, synthetic / name)
        rows.append(ManifestRow(name, PNEUMONIA, 0, index, "0" * 64))
    develop, _ = develop_and_holdout(load_dataset("phantom", phantom_dir))
    copied = develop.paths[int(np.flatnonzero(develop.labels == PNEUMONIA)[3])]
    shutil.copy(copied, synthetic / "synthetic_pneumonia_000099.png")
    rows.append(ManifestRow("synthetic_pneumonia_000099.png", PNEUMONIA, 0, 99, "0" * 64))
    write_manifest(synthetic, rows)
    return {"work": work, "data": phantom_dir, "copied": copied}


def analyze(work: Path, data: Path, *extra: str) -> int:
    return main(
        [
            "analyze-results",
            "--dataset", "phantom",
            "--data-dir", str(data),
            "--metrics-dir", str(work / "metrics"),
            "--analysis-dir", str(work / "analysis"),
            "--model-dir", str(work / "models"),
            "--synthetic-dir", str(work / "synthetic"),
            "--gan-model-path", str(work / "models" / "gan" / "generator_final.pth"),
            "--arch", "resnet18",
            "--num-ssim-real", "10",
            "--num-ssim-synth", "20",
            "--num-gradcam-samples", "1",
            "--tstr-images", "8",
            "--tstr-epochs", "1",
            "--tstr-image-size", "16",
            "--cpu",
            *extra,
        ]
    )  # fmt: skip


@pytest.mark.slow
def test_full_analysis_writes_every_output(setup: dict[str, Path], monkeypatch, tmp_path: Path, capsys) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # no cached Inception weights: FID must be skipped, not fetched
    # the phantoms of different patients reach SSIM ~0.92-0.95 at 32 px; only the copy reaches 0.99
    assert analyze(setup["work"], setup["data"], "--memorization-threshold", "0.99") == 0
    out = setup["work"] / "analysis"
    for figure in FIGURES:
        with Image.open(out / figure) as image:
            assert image.format == "PNG" and image.width > 100
    summary = json.loads((out / "analysis_summary.json").read_text())
    report = (out / "comparison_report.txt").read_text()
    cards = [name for name in summary["outputs"] if name.startswith("model_cards/")]
    assert summary["outputs"] == [
        *FIGURES[:4],
        *FIGURES[4:6],
        FIGURES[6],
        "dataset_card.md",
        *cards,
        "analysis_summary.json",
        "comparison_report.txt",
    ]
    assert {Path(name).stem for name in cards} == set(STRATEGIES)
    assert "For tests and plumbing only" in (out / "dataset_card.md").read_text()  # the phantom's card
    for name in cards:  # each strategy's card quotes its own final metrics
        final = json.loads((setup["work"] / "metrics" / f"{Path(name).stem}_final_metrics.json").read_text())
        card = (out / name).read_text()
        assert "**Not for clinical use.**" in card and f"{final['holdout']['n']} hold-out images" in card
        assert "Not calibrated" in card and f"accuracy {100 * final['holdout']['accuracy']:.1f}%" in card

    # the verdict, image by image: augmented clearly better, curriculum alike; the fold spread beside it
    outcomes = {(c["strategy"], c["reference"]): c["outcome"] for c in summary["holdout_tests"]["comparisons"]}
    assert outcomes == {("augmented", "baseline"): "helped", ("curriculum", "baseline"): "no significant difference"}
    assert "- augmented vs baseline: augmented HELPED" in report
    assert "- curriculum vs baseline: no significant difference" in report and "could have detected ΔAUROC ≥" in report
    outcomes = {(c["strategy"], c["metric"]): c["outcome"] for c in summary["comparisons"]}
    assert outcomes[("augmented", "accuracy")] == "helped"
    assert "caution: only 3 folds" in report and summary["smoke_run"] is None
    printed = capsys.readouterr().out
    assert "augmented vs baseline: augmented HELPED" in printed and "comparison_report.txt" in printed

    memo = summary["memorization"]
    assert memo["n_synthetic"] == 17 and memo["n_flagged"] == 1
    assert memo["flagged"][0]["real"] == str(setup["copied"])
    assert memo["flagged"][0]["synthetic"].endswith("synthetic_pneumonia_000099.png")
    assert memo["flagged"][0]["ssim"] == pytest.approx(1.0)
    assert memo["feature_distance"]["synthetic_min"] == pytest.approx(0.0, abs=1e-4)
    assert "near-copies (SSIM >= 0.99): 1 of 17" in report and str(setup["copied"]) in report

    assert summary["ssim"]["n_real"] == 10 and summary["ssim"]["n_synthetic"] == 17
    assert 0 < summary["ssim"]["synthetic_vs_real"]["mean"] < 1
    diversity = summary["diversity"]
    assert diversity["synthetic"]["pairs"] == 17 * 16 // 2 and diversity["real"]["pairs"] > 0
    assert 0 < diversity["real"]["mean"] < 1 and isinstance(diversity["mode_collapse"], bool)
    assert "Diversity: mean pairwise MS-SSIM" in report
    frechet = summary["frechet_classifier"]
    assert frechet["model"] == "baseline_resnet18" and frechet["feature_dim"] == 512 and frechet["n_per_set"] == 17
    assert summary["inception_fid"] is None
    assert any(line.startswith("Inception FID: torch-fidelity's Inception weights") for line in summary["skipped"])
    assert "skipped: Inception FID" in report

    tstr = summary["tstr"]
    holdout = develop_and_holdout(load_dataset("phantom", setup["data"]))[1]
    assert tstr["n_train"] == 8 and tstr["n_test"] == len(holdout)
    assert tstr["tstr"]["n"] == tstr["trtr"]["n"] == len(holdout)
    assert "trained on synthetic (TSTR)" in report

    gradcam = summary["gradcam"]
    assert [s["kind"] for s in gradcam["samples"]] == ["real pneumonia", "real normal", "synthetic"]
    assert set(gradcam["models"]) == set(STRATEGIES)
    assert all(len(p) == 3 and all(0 <= v <= 1 for v in p) for p in gradcam["models"].values())


def test_missing_inputs_are_skipped_not_fatal(tmp_path: Path) -> None:
    assert analyze(tmp_path / "nothing", tmp_path / "no-data") == 0
    out = tmp_path / "nothing" / "analysis"
    summary = json.loads((out / "analysis_summary.json").read_text())
    assert summary["outputs"] == ["dataset_card.md", "analysis_summary.json", "comparison_report.txt"]
    assert summary["comparisons"] == [] and summary["memorization"] is None and summary["tstr"] is None
    skipped = summary["skipped"]
    assert (
        sum("not found" in line and line.endswith(".json not found") for line in skipped) == 12
    )  # 4 strategies x 3 files
    assert any(line.startswith("dataset:") and "no-data" in line for line in skipped)
    report = (out / "comparison_report.txt").read_text()
    assert "cannot tell whether augmented helped" in report
    assert "skipped: dataset:" in report


def test_data_without_models_or_synthetic_images(phantom_dir: Path, tmp_path: Path) -> None:
    write_generator(tmp_path / "models" / "gan" / "generator_final.pth", conditional=False)
    assert analyze(tmp_path, phantom_dir, "--skip-plots") == 0
    summary = json.loads((tmp_path / "analysis" / "analysis_summary.json").read_text())
    skipped = summary["skipped"]
    assert any(line.startswith("synthetic images:") for line in skipped)
    assert any("unconditional generator" in line for line in skipped)
    assert sum(line.startswith("Grad-CAM: model") for line in skipped) == 4  # one per strategy
    assert "Grad-CAM: no strategy model found" in skipped
    assert summary["gradcam"] is None and summary["tstr"] is None and summary["ssim"] is None


def test_malformed_metrics_file_fails_naming_it(setup: dict[str, Path], tmp_path: Path, capsys) -> None:
    work = tmp_path / "work"
    (work / "metrics").mkdir(parents=True)
    (work / "metrics" / "baseline_final_metrics.json").write_text("[1, 2")
    assert analyze(work, setup["data"]) == 2
    assert "baseline_final_metrics.json" in capsys.readouterr().err


def test_bad_option_value_is_a_clear_error(tmp_path: Path, capsys) -> None:
    assert analyze(tmp_path, tmp_path, "--memorization-threshold", "1.5") == 2
    assert "--memorization-threshold: input should be less than or equal to 1" in capsys.readouterr().err


def test_skip_flags_leave_only_the_ssim_distribution(setup: dict[str, Path], tmp_path: Path) -> None:
    work = tmp_path / "work"
    shutil.copytree(setup["work"] / "synthetic", work / "synthetic")
    skips = ("--skip-plots", "--skip-fidelity", "--skip-memorization", "--skip-tstr", "--skip-gradcam")
    assert analyze(work, setup["data"], *skips) == 0
    summary = json.loads((work / "analysis" / "analysis_summary.json").read_text())
    assert summary["outputs"] == [
        "ssim_distribution.png",
        "dataset_card.md",
        "analysis_summary.json",
        "comparison_report.txt",
    ]
    assert summary["ssim"]["n_real"] == 10 and summary["ssim"]["n_synthetic"] == 17
    assert summary["memorization"] is None and summary["frechet_classifier"] is None and summary["gradcam"] is None
    for flag in ("--skip-plots", "--skip-fidelity", "--skip-memorization", "--skip-tstr", "--skip-gradcam"):
        assert any(line.endswith(flag) for line in summary["skipped"])


def test_image_quality_compares_the_synthesized_class(setup: dict[str, Path], tmp_path: Path) -> None:
    """--synthesize minority on PneumoniaMNIST makes normal images: SSIM, diversity and Fréchet distances compare
    them with real normal images, not pneumonia ones (which would leave them nothing to compare)."""
    work = tmp_path / "work"
    shutil.copytree(setup["work"] / "models", work / "models")
    (work / "synthetic").mkdir(parents=True)
    develop, _ = develop_and_holdout(load_dataset("phantom", setup["data"]))
    rows = []
    for index, source in enumerate(sorted((setup["work"] / "synthetic").glob("*.png"))):
        name = f"synthetic_normal_{index:06d}.png"
        shutil.copy(source, work / "synthetic" / name)
        rows.append(ManifestRow(name, NORMAL, 0, index, "0" * 64))
    write_manifest(work / "synthetic", rows)
    skips = ("--skip-plots", "--skip-memorization", "--skip-tstr", "--skip-gradcam")
    assert analyze(work, setup["data"], *skips, "--metrics-dir", str(setup["work"] / "metrics")) == 0
    summary = json.loads((work / "analysis" / "analysis_summary.json").read_text())
    assert summary["ssim"]["class"] == summary["diversity"]["class"] == "normal"
    assert summary["ssim"]["n_real"] == min(10, int((develop.labels == NORMAL).sum()))
    assert summary["frechet_classifier"]["class"] == "normal"
    assert not any("synthetic pneumonia" in line or "synthetic normal" in line for line in summary["skipped"])
    report = (work / "analysis" / "comparison_report.txt").read_text()
    assert "real development-set normal images (the synthesized class)" in report
