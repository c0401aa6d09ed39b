"""The matched-compute control (baseline-matched, --match-compute): the augmented run's optimizer steps and images
per epoch, with real images resampled in place of the synthetic ones; and the training folds' class mix."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from training_helpers import FAST, classifier_options, write_synthetic_folder

from pipeline.cli import main as pneumonia
from pipeline.profiles import STRATEGIES
from services.trainer.classification.data import class_mix, fold_indices, resampled_real, synthetic_plan
from shared.configs import ClassifierTrainingConfig
from shared.configs.classifier import STRATEGIES as STRATEGY_NAMES
from shared.datasets import ArrayImages, load_dataset
from shared.datasets.phantom import write_phantom_dataset
from shared.errors import ConfigError
from shared.splits import develop_and_holdout
from shared.synthetic import MANIFEST_NAME, SYNTHETIC_PREFIX

NUM_SYNTHETIC = 14


def test_one_list_of_strategies_named_by_the_config() -> None:
    from services.analyzer import report

    assert tuple(STRATEGIES) == STRATEGY_NAMES == report.STRATEGIES
    assert STRATEGY_NAMES[:2] == ("baseline", "baseline-matched")  # the control is reported beside the baseline
    for name, switches in STRATEGIES.items():
        assert ClassifierTrainingConfig(**switches).strategy == name
    assert STRATEGIES["baseline-matched"] == {**STRATEGIES["augmented"], "match_compute": True}


def test_match_compute_controls_a_synthetic_run() -> None:
    with pytest.raises(ConfigError, match="--match-compute"):
        ClassifierTrainingConfig(match_compute=True)
    matched = classifier_options(["train-classifier", "--use-synthetic", "--match-compute"])
    assert (matched.strategy, matched.sampling) == ("baseline-matched", "augmented")  # augmented's plan, real images
    curriculum = classifier_options(["train-classifier", "--use-synthetic", "--use-curriculum", "--match-compute"])
    assert (curriculum.strategy, curriculum.sampling) == ("baseline-matched-curriculum", "curriculum")


def test_the_augmented_plan_draws_the_whole_pool_every_epoch() -> None:
    for epochs, n_real, pool in ((3, 40, 12), (1, 7, 100)):
        assert synthetic_plan("augmented", epochs, n_real, pool, None) == [pool] * epochs
    assert synthetic_plan("baseline", 3, 40, 12, None) == [0, 0, 0]


@pytest.fixture(scope="module")
def phantom_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_phantom_dataset(tmp_path_factory.mktemp("phantom16m"), num_patients=80, image_size=16, seed=1)


def test_resampled_images_are_real_seeded_and_drawn_with_replacement(phantom_dir: Path) -> None:
    develop, _ = develop_and_holdout(load_dataset("phantom", phantom_dir))
    first = resampled_real(develop, 3 * len(develop), np.random.default_rng([0, 1]))
    again = resampled_real(develop, 3 * len(develop), np.random.default_rng([0, 1]))
    assert len(first) == 3 * len(develop)
    assert list(first.patient_ids) == list(again.patient_ids)  # seeded
    assert len(set(first.patient_ids)) < len(first)  # with replacement
    assert set(first.patient_ids) <= set(develop.patient_ids)
    assert not any(pid.startswith(SYNTHETIC_PREFIX) for pid in first.patient_ids)


@pytest.fixture(scope="module")
def runs(phantom_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """augmented with a synthetic folder, baseline-matched with only that folder's manifest (no image files)."""
    root = tmp_path_factory.mktemp("matched")
    write_synthetic_folder(root / "synthetic", NUM_SYNTHETIC)
    manifest_only = root / "manifest_only"
    manifest_only.mkdir()
    (manifest_only / MANIFEST_NAME).write_bytes((root / "synthetic" / MANIFEST_NAME).read_bytes())
    for synthetic, flags in ((root / "synthetic", []), (manifest_only, ["--match-compute"])):
        argv = [
            "train-classifier", "--data-dir", str(phantom_dir), "--synthetic-dir", str(synthetic),
            "--model-dir", str(root / "models"), "--results-dir", str(root / "metrics"),
            "--figures-dir", str(root / "figures"), *FAST, "--k-folds", "2", "--batch-size", "16",
            "--use-synthetic", *flags,
        ]  # fmt: skip
        assert pneumonia(argv) == 0
    return root


def epochs(runs: Path, strategy: str) -> list[dict]:
    history = json.loads((runs / "metrics" / f"{strategy}_training_history.json").read_text())
    return [entry for fold in history["folds"] for entry in fold["epochs"]]


@pytest.mark.slow
def test_matched_run_takes_the_augmented_steps_on_as_many_images(runs: Path) -> None:
    augmented, matched = epochs(runs, "augmented"), epochs(runs, "baseline-matched")
    assert len(augmented) == len(matched) == 4  # 2 folds x 2 epochs
    for a, m in zip(augmented, matched, strict=True):
        assert m["n_real"] == a["n_real"]
        assert m["n_real"] + m["n_resampled_real"] == a["n_real"] + a["n_synthetic"]  # images per epoch
        assert m["n_resampled_real"] == a["n_synthetic"] == NUM_SYNTHETIC
        assert m["optimizer_steps"] == a["optimizer_steps"] == -(-(a["n_real"] + NUM_SYNTHETIC) // 16)
        # Never a synthetic image: the matched run's synthetic folder holds no image file at all.
        assert m["n_synthetic"] == 0 and m["synthetic_ratio"] == 0


@pytest.mark.slow
def test_class_mix_before_and_after_the_synthetic_images(runs: Path, phantom_dir: Path) -> None:
    augmented = json.loads((runs / "metrics" / "augmented_final_metrics.json").read_text())
    matched = json.loads((runs / "metrics" / "baseline-matched_final_metrics.json").read_text())
    n_real = sum(e["n_real"] for e in epochs(runs, "augmented") if e["epoch"] == 0)
    for final in (augmented, matched):
        real = final["class_mix"]["real"]
        assert real["normal"] + real["pneumonia"] == n_real  # summed over the training folds
        assert real["normal"] > 0 and real["pneumonia"] > 0
    assert augmented["class_mix"]["real"] == matched["class_mix"]["real"]
    # write_synthetic_folder labels half of the images of each class; each fold adds the whole pool.
    assert augmented["class_mix"]["synthetic"] == {"normal": NUM_SYNTHETIC, "pneumonia": NUM_SYNTHETIC}
    after = augmented["class_mix"]["after"]
    assert after == {k: augmented["class_mix"]["real"][k] + NUM_SYNTHETIC for k in ("normal", "pneumonia")}
    assert matched["class_mix"]["synthetic"] == {"normal": 0, "pneumonia": 0}
    assert matched["n_synthetic_pool"] == 0


def test_class_mix_counts_labels() -> None:
    assert class_mix(np.array([0, 1, 1, 1])) == {"normal": 1, "pneumonia": 3}
    assert class_mix(np.array([], dtype=np.int64)) == {"normal": 0, "pneumonia": 0}


def test_folds_are_never_cut_from_synthetic_images() -> None:
    ids = [f"p{i}" for i in range(10)]
    real = ArrayImages(np.zeros((10, 8, 8), np.uint8), ids, [0, 1] * 5)
    assert len(fold_indices(real, 2, 0.2, seed=0)) == 2
    mixed = ArrayImages(np.zeros((10, 8, 8), np.uint8), [*ids[:9], f"{SYNTHETIC_PREFIX}x.png"], [0, 1] * 5)
    with pytest.raises(RuntimeError, match="synthetic"):
        fold_indices(mixed, 2, 0.2, seed=0)
