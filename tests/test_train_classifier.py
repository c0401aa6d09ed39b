"""`pneumonia train-classifier` end to end on the phantom dataset: each strategy writes every output, synthetic
images reach training folds only, and bad options fail with a clear message."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from unittest.mock import patch

import numpy as np
import pytest
import torch
from training_helpers import FAST, MAX_IMAGES, classifier_options, output_args, write_synthetic_folder

from pipeline.cli import main as pneumonia
from services.trainer.classification.shift import gated_predictions, shifted_holdouts
from services.trainer.classification.state import TRAINING_STATE, training_state_path
from services.trainer.hooks import TrainingStopped
from services.trainer.train_classifier import assert_real_only, subsample, train_strategy
from shared.calibration import Calibration, choose_threshold, prevalence_threshold
from shared.checkpoints import load_checkpoint
from shared.configs import ClassifierTrainingConfig
from shared.corruptions import CORRUPTIONS, CorruptedImages
from shared.datasets import ArrayImages, load_dataset
from shared.datasets.phantom import write_phantom_dataset
from shared.errors import CheckpointError, ConfigError
from shared.metrics import binary_metrics
from shared.models.classifier import load_classifier
from shared.models.ensemble import FoldEnsemble
from shared.operating_rule import OperatingRule
from shared.plausibility import PlausibilityGate
from shared.predictions import read_holdout_predictions, read_shifted_predictions
from shared.splits import develop_and_holdout
from shared.synthetic import SYNTHETIC_PREFIX

STRATEGY_FLAGS = {  # one epoch where a second shows nothing new (CPU time is precious)
    "baseline": ["--epochs", "1"],
    "augmented": ["--use-synthetic", "--epochs", "1"],
    "curriculum": ["--use-synthetic", "--use-curriculum", "--curriculum-schedule", "0:0.0, 1:0.5"],
}
NUM_SYNTHETIC = 12


@pytest.fixture(scope="module")
def phantom_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """80 phantom patients at 16 px (hold-out 16, development 64): smaller than the suite's shared phantom."""
    return write_phantom_dataset(tmp_path_factory.mktemp("phantom16"), num_patients=80, image_size=16, seed=1)


@pytest.fixture(scope="module")
def runs(phantom_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """All three strategies, 2 folds x 2 epochs each, into one output tree."""
    root = tmp_path_factory.mktemp("train_classifier")
    write_synthetic_folder(root / "synthetic", NUM_SYNTHETIC)
    for flags in STRATEGY_FLAGS.values():
        argv = ["train-classifier", "--data-dir", str(phantom_dir), *output_args(root), *FAST, "--k-folds", "2", *flags]
        assert pneumonia(argv) == 0
    return root


@pytest.mark.slow
@pytest.mark.parametrize("strategy", list(STRATEGY_FLAGS))
def test_each_strategy_writes_all_outputs(runs: Path, strategy: str) -> None:
    for name in ("training_history", "cv_summary", "final_metrics"):
        assert (runs / "metrics" / f"{strategy}_{name}.json").is_file()
    for fold in (1, 2):
        assert (runs / "models" / f"fold_{fold}_{strategy}_resnet18.pth").is_file()
    figures = {"training_curves", "cv_metrics", "reliability"} | (
        {"synthetic_ratio"} if strategy == "curriculum" else set()
    )
    assert {p.name for p in (runs / "figures").glob(f"{strategy}_*.png")} == {f"{strategy}_{f}.png" for f in figures}

    history = json.loads((runs / "metrics" / f"{strategy}_training_history.json").read_text())
    assert history["strategy"] == strategy and history["config"]["k_folds"] == 2
    assert [f["fold"] for f in history["folds"]] == [1, 2]
    for fold in history["folds"]:
        assert [e["epoch"] for e in fold["epochs"]] == list(range(history["config"]["epochs"]))
        for entry in fold["epochs"]:
            assert set(entry) >= {"train_loss", "train_acc", "val_loss", "val_acc", "val_auroc", "synthetic_ratio"}
            assert np.isfinite(entry["train_loss"]) and entry["seconds"] > 0

    cv = json.loads((runs / "metrics" / f"{strategy}_cv_summary.json").read_text())
    assert [f["fold"] for f in cv["folds"]] == [1, 2]
    assert cv["average"]["accuracy"] == pytest.approx(np.mean([f["accuracy"] for f in cv["folds"]]))
    assert len(cv["ci95"]["accuracy"]) == 2

    final = json.loads((runs / "metrics" / f"{strategy}_final_metrics.json").read_text())
    assert final["model"] == str(runs / "models" / f"{strategy}_resnet18.pth")
    assert final["n_synthetic_pool"] == (0 if strategy == "baseline" else NUM_SYNTHETIC)

    # The served model is the fold-ensemble: both fold models as they were saved, each with its own temperature.
    assert final["final_model"]["kind"] == "fold-ensemble" and final["final_model"]["folds"] == [1, 2]
    assert final["selected_fold"] is None and final["n_train_real"] == final["n_develop"]
    model, config = load_classifier(runs / "models" / f"{strategy}_resnet18.pth")
    assert isinstance(model, FoldEnsemble) and config["ensemble"]["folds"] == [1, 2]
    for fold, member in zip((1, 2), model.members, strict=True):
        fold_model, fold_config = load_classifier(runs / "models" / f"fold_{fold}_{strategy}_resnet18.pth")
        fold_weights = {k: v for k, v in fold_model.state_dict().items() if not k.startswith("fc.")}
        assert all(torch.equal(member.state_dict()[k], v) for k, v in fold_weights.items())
        assert torch.equal(model.fc.heads[fold - 1].weight, fold_model.fc.weight)
        assert config["ensemble"]["temperatures"][fold - 1] == fold_config["calibration"]["temperature"]
    # Its hold-out answers are the mean of the fold models' calibrated probabilities, at its own threshold: the run's
    # operating rule on the pooled out-of-fold validation predictions (the hold-out never enters).
    assert config["calibration"] == final["calibration"]
    assert config["calibration"]["temperature"] == 1.0
    assert config["calibration"]["threshold"] == final["operating_point"]["threshold"]
    assert config["calibration"]["n_val"] == sum(f["n"] for f in cv["folds"])
    clean = read_holdout_predictions(runs / "metrics" / f"{strategy}_holdout_predictions.csv")
    mean = np.mean([clean.probability[f"fold_{fold}"] for fold in (1, 2)], axis=0)
    assert final["holdout"]["auroc"] == pytest.approx(binary_metrics(clean.labels, mean)["auroc"], abs=1e-9)
    assert final["holdout"]["accuracy"] == pytest.approx(binary_metrics(clean.labels, mean)["accuracy"], abs=1e-9)
    assert config["plausibility"]["fitted_on"] > 0 and len(config["plausibility"]["features"]["mean"]) == 2 * 512
    assert set(final["served_shifted"]["shifts"]) == set(final["shifted"]["shifts"])
    operating = final["holdout_operating_point"]
    assert operating["threshold"] == pytest.approx(config["calibration"]["threshold"])
    assert operating["accuracy"] == pytest.approx(
        binary_metrics(clean.labels, mean, config["calibration"]["threshold"])["accuracy"], abs=1e-9
    )
    assert operating["n"] == final["holdout"]["n"] and 0 <= operating["ece_calibrated"] <= 1
    assert final["holdout_operating_point_summary"]["average"]["accuracy"] == pytest.approx(
        np.mean([m["accuracy"] for m in final["holdout_operating_point_per_fold"]])
    )


@pytest.mark.slow
def test_best_fold_serves_the_fold_model_with_the_best_validation_auroc(
    runs: Path, phantom_dir: Path, tmp_path: Path
) -> None:
    """--final-model best-fold on the finished run (--resume: nothing is retrained) copies that fold model."""
    for folder in ("models", "metrics", "figures", "synthetic"):
        shutil.copytree(runs / folder, tmp_path / folder)
    argv = ["train-classifier", "--data-dir", str(phantom_dir), *output_args(tmp_path), *FAST, "--k-folds", "2"]
    assert pneumonia([*argv, *STRATEGY_FLAGS["baseline"], "--resume", "--final-model", "best-fold"]) == 0
    cv = json.loads((tmp_path / "metrics" / "baseline_cv_summary.json").read_text())
    final = json.loads((tmp_path / "metrics" / "baseline_final_metrics.json").read_text())
    selected = final["selected_fold"]
    assert selected == 1 + int(np.argmax([-1.0 if f["auroc"] is None else f["auroc"] for f in cv["folds"]]))
    assert final["final_model"] == {
        "kind": "best-fold",
        "description": f"the resnet18 model of fold {selected}, the best validation AUROC",
        "folds": [selected],
    }
    assert final["holdout"] == {k: v for k, v in final["holdout_per_fold"][selected - 1].items() if k != "fold"}
    assert (tmp_path / "models" / "baseline_resnet18.pth").read_bytes() == (
        tmp_path / "models" / f"fold_{selected}_baseline_resnet18.pth"
    ).read_bytes()
    _, config = load_classifier(tmp_path / "models" / "baseline_resnet18.pth")
    assert config["calibration"] == final["calibration"] and "ensemble" not in config
    assert config["calibration"]["n_val"] == cv["folds"][selected - 1]["n"]  # fitted on its validation fold


@pytest.mark.slow
@pytest.mark.parametrize("strategy", list(STRATEGY_FLAGS))
def test_synthetic_images_never_reach_validation_or_holdout(runs: Path, phantom_dir: Path, strategy: str) -> None:
    develop, holdout = develop_and_holdout(load_dataset("phantom", phantom_dir))
    develop = subsample(develop, MAX_IMAGES, seed=0)
    cv = json.loads((runs / "metrics" / f"{strategy}_cv_summary.json").read_text())
    final = json.loads((runs / "metrics" / f"{strategy}_final_metrics.json").read_text())
    # The validation folds partition the real development subset; the hold-out is exactly the real hold-out.
    assert sum(f["n"] for f in cv["folds"]) == len(develop) == final["n_develop"]
    assert sum(f["n_positive"] for f in cv["folds"]) == int(develop.labels.sum())
    for metrics in final["holdout_per_fold"]:
        assert (metrics["n"], metrics["n_positive"]) == (len(holdout), int(holdout.labels.sum()))
    # The per-image predictions are the real hold-out's, in its order: no synthetic row.
    predictions = read_holdout_predictions(runs / "metrics" / f"{strategy}_holdout_predictions.csv")
    assert predictions.images.tolist() == holdout.patient_ids.tolist()
    assert predictions.labels.tolist() == holdout.labels.tolist()
    assert not any(name.startswith(SYNTHETIC_PREFIX) for name in predictions.images)
    assert predictions.fold_models == [f"fold_{m['fold']}" for m in final["holdout_per_fold"]]


@pytest.mark.slow
def test_every_fold_model_is_scored_on_the_shifted_hold_out(runs: Path, phantom_dir: Path) -> None:
    """Each of MedMNIST-C's 13 corruptions at the default severity 3: the per-image predictions file holds, per shift,
    what the fold model itself gives on that corrupted hold-out, and the final metrics summarize them per shift."""
    _, holdout = develop_and_holdout(load_dataset("phantom", phantom_dir))
    final = json.loads((runs / "metrics" / "baseline_final_metrics.json").read_text())
    shifted = read_shifted_predictions(runs / "metrics" / "baseline_shifted_predictions.csv")
    assert shifted.shifts == [f"{name}@3" for name in CORRUPTIONS]
    assert set(final["shifted"]["shifts"]) == set(shifted.shifts)
    for name in ("holdout", "shifts"):
        metrics = final["shifted"][name] if name == "holdout" else final["shifted"]["shifts"]["gaussian_noise@3"]
        assert set(metrics) >= {"auroc", "accuracy", "accuracy_at_0.5", "specificity_at_sensitivity_0.95", "refused"}
    model, config = load_classifier(runs / "models" / "fold_2_baseline_resnet18.pth")
    images = CorruptedImages(holdout, "contrast_down", 3, seed=0)
    direct = gated_predictions(
        model,
        images,
        config,
        Calibration.from_dict(config["calibration"]),
        PlausibilityGate.from_dict(config["plausibility"]),
        torch.device("cpu"),
    )
    found = shifted.per_shift["contrast_down@3"]
    assert found.labels.tolist() == holdout.labels.tolist()
    np.testing.assert_allclose(found.probability["fold_2"], direct["calibrated"], rtol=1e-6)
    assert shifted.refused["contrast_down@3"]["fold_2"].tolist() == direct["refused"]
    clean = read_holdout_predictions(runs / "metrics" / "baseline_holdout_predictions.csv")
    assert not np.allclose(found.probability["fold_2"], clean.probability["fold_2"])


@pytest.mark.slow
def test_the_rule_in_force_is_named_and_compared_with_the_others_under_shift(runs: Path) -> None:
    """The default operating rule (prevalence, at the validation data's, for a model trained with class weights and so
    standing at a 0.5 prior) is in every checkpoint, and the final metrics set Youden's J and a target sensitivity
    beside it, each chosen on the same pooled out-of-fold validation predictions and scored on the hold-out and the
    shifts."""
    final = json.loads((runs / "metrics" / "baseline_final_metrics.json").read_text())
    assert final["operating_rule"] == "prevalence" and final["operating_point"]["operating_rule"] == "prevalence"
    assert (
        "Bayes rule" in final["operating_point"]["description"]
        and "0.5 prior" in final["operating_point"]["description"]
    )
    rules = final["operating_rules"]
    assert list(rules) == ["prevalence", "sensitivity:0.95", "youden"]
    assert [rule for rule, entry in rules.items() if entry["in_force"]] == ["prevalence"]
    records = load_checkpoint(training_state_path(runs / "models", "baseline", "resnet18"), TRAINING_STATE)[
        "folds_done"
    ]
    pooled_p = np.concatenate([r["validation_predictions"]["calibrated"] for r in records])
    pooled_y = np.concatenate([r["validation_predictions"]["labels"] for r in records])
    assert rules["youden"]["threshold"] == choose_threshold(pooled_p, pooled_y)[0]
    expected = prevalence_threshold(pooled_y.mean(), 0.5)  # the class-weighted loss: scores at a balanced prior
    assert final["operating_point"]["threshold"] == rules["prevalence"]["threshold"] == pytest.approx(expected)
    for entry in rules.values():
        assert set(entry["holdout"]) == set(entry["shifted_mean"]) == {"accuracy", "sensitivity", "specificity"}
        assert entry["shifted_worst"]["accuracy"] <= entry["shifted_mean"]["accuracy"]
    _, config = load_classifier(runs / "models" / "baseline_resnet18.pth")
    assert Calibration.from_dict(config["calibration"]).rule == OperatingRule("prevalence")


@pytest.mark.slow
def test_synthetic_counts_follow_each_strategy(runs: Path) -> None:
    def epochs(strategy: str) -> list[dict]:
        history = json.loads((runs / "metrics" / f"{strategy}_training_history.json").read_text())
        return [entry for fold in history["folds"] for entry in fold["epochs"]]

    assert all(e["n_synthetic"] == 0 and e["synthetic_ratio"] == 0 for e in epochs("baseline"))
    for e in epochs("augmented"):
        assert e["n_synthetic"] == NUM_SYNTHETIC
        assert e["synthetic_ratio"] == pytest.approx(NUM_SYNTHETIC / (NUM_SYNTHETIC + e["n_real"]))
    for e in epochs("curriculum"):
        # Schedule 0:0.0, 1:0.5: none in epoch 0; epoch 1 wants as many synthetic as real (~20), the pool holds 12.
        expected = 0 if e["epoch"] == 0 else min(NUM_SYNTHETIC, e["n_real"])
        assert e["n_synthetic"] == expected
        assert e["synthetic_ratio"] == pytest.approx(expected / (expected + e["n_real"]))
    assert any(0 < e["synthetic_ratio"] < 0.5 for e in epochs("curriculum"))  # the pool capped it: ratio recorded


def test_validation_sets_with_synthetic_images_are_refused() -> None:
    images = ArrayImages(np.zeros((2, 8, 8), np.uint8), ["p1", "synthetic-x.png"], [0, 1])
    with pytest.raises(RuntimeError, match="synthetic"):
        assert_real_only(images, "validation fold 1")
    assert_real_only(images.subset([0]), "validation fold 1")


def test_subsample_is_stratified_by_patient_and_seeded(phantom_dir: Path) -> None:
    develop, _ = develop_and_holdout(load_dataset("phantom", phantom_dir))
    subset = subsample(develop, 40, seed=0)
    assert abs(len(subset) - 40) <= 2
    assert abs(subset.labels.mean() - develop.labels.mean()) < 0.05
    assert set(subset.patient_ids) <= set(develop.patient_ids)
    assert list(subsample(develop, 40, seed=0).patient_ids) == list(subset.patient_ids)
    assert list(subsample(develop, 40, seed=1).patient_ids) != list(subset.patient_ids)
    assert subsample(develop, 10_000, seed=0) is develop


def test_one_split_run_reports_progress(phantom_dir: Path, tmp_path: Path) -> None:
    args = classifier_options(
        ["train-classifier", "--data-dir", str(phantom_dir), *output_args(tmp_path), *FAST, "--k-folds", "1"]
        + ["--epochs", "1", "--scheduler", "onecycle", "--class-balance", "sampler"]
    )
    events: list[dict] = []
    final = train_strategy(args, progress=events.append)
    assert [(e["strategy"], e["fold"], e["num_folds"], e["epoch"]) for e in events] == [("baseline", 1, 1, 0)]
    assert final["selected_fold"] == 1 and len(final["holdout_per_fold"]) == 1
    assert final["holdout_summary"]["ci95"]["accuracy"] is None
    assert (tmp_path / "models" / "baseline_resnet18.pth").is_file()
    # Per hold-out image: the fold model's calibrated probability and its decision at its operating point.
    predictions = read_holdout_predictions(tmp_path / "metrics" / "baseline_holdout_predictions.csv")
    op = final["holdout_operating_point"]
    assert len(predictions.labels) == op["n"] and int(predictions.labels.sum()) == op["n_positive"]
    decisions = predictions.decision["fold_1"]
    assert decisions.tolist() == (predictions.probability["fold_1"] >= op["threshold"]).astype(int).tolist()
    assert np.mean(decisions == predictions.labels) == pytest.approx(op["accuracy"])
    assert predictions.probability["ensemble"].tolist() == predictions.probability["fold_1"].tolist()


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--use-curriculum"], "add --use-synthetic"),
        (["--use-synthetic", "--use-curriculum", "--curriculum-schedule", "0:0.0, 5:1.5"], "--curriculum-schedule"),
        (["--use-synthetic", "--synthetic-dir", "MISSING"], "synthetic image folder not found"),
        (["--k-folds", "0"], "--k-folds"),
        (["--weights", "imagenet"], "--weights none"),
    ],
)
def test_bad_options_fail_with_a_clear_message(
    phantom_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    flags: list[str],
    message: str,
) -> None:
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))  # no ImageNet weights cached
    flags = [str(tmp_path / f) if f == "MISSING" else f for f in flags]
    argv = ["train-classifier", "--data-dir", str(phantom_dir), *output_args(tmp_path), *FAST, *flags]
    assert pneumonia(argv) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "models").exists() or not any((tmp_path / "models").iterdir())


RESUME_FLAGS = [  # every piece of state a resume restores: scheduler, sampler, synthetic draws, two folds
    "--image-size", "8", "--k-folds", "2", "--epochs", "2", "--scheduler", "onecycle", "--class-balance", "sampler",
    "--use-synthetic", "--use-curriculum", "--curriculum-schedule", "0:0.0, 1:0.5",
]  # fmt: skip


class Interrupted(Exception):
    """Raised from the progress hook to kill a run at a chosen epoch."""


def parse_classifier_args(phantom_dir: Path, root: Path, *extra: str) -> ClassifierTrainingConfig:
    return classifier_options(
        ["train-classifier", "--data-dir", str(phantom_dir), *output_args(root), *FAST, *RESUME_FLAGS, *extra]
    )


def interrupt_at(fold: int, epoch: int) -> Callable[[dict], None]:
    """A progress hook that kills the run after `epoch` (0-based) of `fold`."""

    def progress(event: dict) -> None:
        if (event["fold"], event["epoch"]) == (fold, epoch):
            raise Interrupted(f"killed after fold {fold} epoch {epoch}")

    return progress


@pytest.fixture(scope="module")
def uninterrupted(phantom_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("uninterrupted")
    write_synthetic_folder(root / "synthetic", NUM_SYNTHETIC)
    return root, train_strategy(parse_classifier_args(phantom_dir, root))


def without_timing(history: dict) -> list:
    return [[{k: v for k, v in e.items() if k != "seconds"} for e in fold["epochs"]] for fold in history["folds"]]


@pytest.mark.slow
def test_resumed_run_ends_as_an_uninterrupted_run(
    phantom_dir: Path, tmp_path: Path, uninterrupted: tuple[Path, dict]
) -> None:
    """Killed in the middle of fold 2: fold 1 is reused, fold 2 goes on from its first epoch's state."""
    straight_root, straight = uninterrupted
    fold, epoch = 2, 0
    write_synthetic_folder(tmp_path / "synthetic", NUM_SYNTHETIC)
    with pytest.raises(Interrupted):
        train_strategy(parse_classifier_args(phantom_dir, tmp_path), progress=interrupt_at(fold, epoch))
    assert not (tmp_path / "models" / "curriculum_resnet18.pth").exists()

    events: list[dict] = []
    resumed = train_strategy(parse_classifier_args(phantom_dir, tmp_path, "--resume"), progress=events.append)
    # Only what was left is trained: the rest of the interrupted fold, then the folds after it.
    expected = [(f, e) for f in (1, 2) for e in (0, 1) if (f, e) > (fold, epoch)]
    assert [(e["fold"], e["epoch"]) for e in events] == expected

    for key in ("holdout_per_fold", "selected_fold", "holdout", "n_train_real", "n_develop"):
        assert resumed[key] == straight[key], key
    for name in ("cv_summary", "final_metrics"):
        a = json.loads((straight_root / "metrics" / f"curriculum_{name}.json").read_text())
        b = json.loads((tmp_path / "metrics" / f"curriculum_{name}.json").read_text())
        a.pop("model", None), b.pop("model", None)
        assert a == b, name
    a, b = (
        json.loads((r / "metrics" / "curriculum_training_history.json").read_text()) for r in (straight_root, tmp_path)
    )
    assert without_timing(a) == without_timing(b)
    for f in (1, 2):
        name = f"fold_{f}_curriculum_resnet18.pth"
        weights_a = torch.load(straight_root / "models" / name, weights_only=False)["state_dict"]
        weights_b = torch.load(tmp_path / "models" / name, weights_only=False)["state_dict"]
        assert all(torch.equal(t, weights_b[k]) for k, t in weights_a.items()), name


@pytest.mark.slow
def test_folds_trained_in_separate_runs_add_up_to_the_whole_cross_validation(
    phantom_dir: Path, tmp_path: Path, uninterrupted: tuple[Path, dict]
) -> None:
    """Kubernetes' Indexed Job: one run per --fold-index, in any order; the last one writes the strategy's results."""
    straight_root, straight = uninterrupted
    write_synthetic_folder(tmp_path / "synthetic", NUM_SYNTHETIC)
    events: list[dict] = []
    assert train_strategy(parse_classifier_args(phantom_dir, tmp_path, "--fold-index", "1"), events.append) is None
    assert {e["fold"] for e in events} == {2}
    assert not (tmp_path / "metrics" / "curriculum_final_metrics.json").exists()
    final = train_strategy(parse_classifier_args(phantom_dir, tmp_path, "--fold-index", "0"), events.append)
    assert {e["fold"] for e in events} == {1, 2}
    for key in ("holdout_per_fold", "selected_fold", "holdout", "holdout_operating_point_per_fold", "calibration"):
        assert final[key] == straight[key], key
    with pytest.raises(ConfigError, match="--fold-index must be in 0..1"):
        train_strategy(parse_classifier_args(phantom_dir, tmp_path, "--fold-index", "2"))


def test_should_stop_stops_at_an_epoch_boundary_and_the_run_resumes(phantom_dir: Path, tmp_path: Path) -> None:
    args = classifier_options(
        ["train-classifier", "--data-dir", str(phantom_dir), *output_args(tmp_path), *FAST, "--k-folds", "2"]
        + ["--epochs", "1", "--image-size", "8"]
    )
    events: list[dict] = []
    with pytest.raises(TrainingStopped, match="before baseline fold 2 epoch 1"):
        train_strategy(args, progress=events.append, should_stop=lambda: len(events) == 1)
    assert [(e["fold"], e["epoch"]) for e in events] == [(1, 0)]
    assert (tmp_path / "models" / "fold_1_baseline_resnet18.pth").is_file()
    args = args.model_copy(update={"resume": True})
    final = train_strategy(args, progress=events.append)
    assert [(e["fold"], e["epoch"]) for e in events] == [(1, 0), (2, 0)]
    assert len(final["holdout_per_fold"]) == 2


def test_resume_refuses_other_options_and_a_missing_state(phantom_dir: Path, tmp_path: Path) -> None:
    argv = ["train-classifier", "--data-dir", str(phantom_dir), *output_args(tmp_path), *FAST, "--k-folds", "2"]
    argv += ["--epochs", "1", "--image-size", "8"]
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        train_strategy(classifier_options([*argv, "--resume"]))
    with pytest.raises(Interrupted):
        train_strategy(classifier_options(argv), progress=interrupt_at(2, 0))
    with pytest.raises(CheckpointError, match=r"lr: 0\.001 in the checkpoint, 0\.002 now"):
        train_strategy(classifier_options([*argv, "--resume", "--lr", "0.002"]))
    # A finished fold's model that was replaced is detected, not silently reused.
    fold_model = tmp_path / "models" / "fold_1_baseline_resnet18.pth"
    fold_model.write_bytes(fold_model.read_bytes() + b"\0")
    with pytest.raises(CheckpointError, match="fold 1's model .* is missing or was replaced"):
        train_strategy(classifier_options([*argv, "--resume", "--workers", "0"]))


def test_shifted_copies_are_corrupted_once_and_equal_to_corrupting_on_load(phantom_dir: Path) -> None:
    """Every model of a run is scored on the same shifted copies: held in memory when small, each image exactly what
    CorruptedImages gives; above the memory bound they stay lazy."""
    _, holdout = develop_and_holdout(load_dataset("phantom", phantom_dir))
    held = shifted_holdouts(holdout, (2, 5), seed=3)
    assert list(held) == [f"{name}@{severity}" for severity in (2, 5) for name in CORRUPTIONS]
    for name in ("gaussian_noise@5", "brightness_down@2"):
        corruption, severity = name.split("@")
        lazy = CorruptedImages(holdout, corruption, int(severity), seed=3)
        assert isinstance(held[name], ArrayImages) and held[name].labels.tolist() == holdout.labels.tolist()
        for i in (0, len(holdout) - 1):
            assert np.array_equal(np.asarray(held[name].load(i)), np.asarray(lazy.load(i)))
    with patch("services.trainer.classification.shift.MAX_HELD_BYTES", 10):
        assert all(isinstance(images, CorruptedImages) for images in shifted_holdouts(holdout, (3,), 0).values())
    assert shifted_holdouts(holdout, (), 0) == {}
