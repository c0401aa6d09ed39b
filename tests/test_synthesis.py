"""Class-aware synthesis (`pneumonia experiment --synthesize`): the minority class of the development split, each
choice's classes and counts, the generate steps both drivers run, and merging one folder per class."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from training_helpers import write_synthetic_folder

from pipeline.cli import build_parser
from pipeline.plan import develop_labels, plan
from pipeline.synthesis import SYNTHESIZE, minority_class, synthesis_counts
from shared.datasets import load_dataset
from shared.datasets.phantom import write_phantom_dataset
from shared.errors import ConfigError, DatasetError
from shared.splits import develop_and_holdout
from shared.synthetic import MANIFEST_NAME, ManifestRow, load_synthetic, merge_synthetic_folders, write_manifest

PNEUMONIA_MAJORITY = np.array([1] * 74 + [0] * 26)  # PneumoniaMNIST's development mix


def never(_: object = None) -> np.ndarray:
    raise AssertionError("the development labels are not needed for this choice")


def test_the_minority_is_the_class_with_fewer_images() -> None:
    assert minority_class(PNEUMONIA_MAJORITY) == "normal"
    assert minority_class(1 - PNEUMONIA_MAJORITY) == "pneumonia"
    assert minority_class(np.array([0, 1, 0, 1])) is None


def test_each_choice_gives_its_classes_and_counts() -> None:
    labels = lambda: PNEUMONIA_MAJORITY  # noqa: E731
    assert synthesis_counts("minority", 300, labels) == {"normal": 300}
    assert synthesis_counts("minority", 300, lambda: 1 - PNEUMONIA_MAJORITY) == {"pneumonia": 300}
    assert synthesis_counts("pneumonia", 300, never) == {"pneumonia": 300}
    assert synthesis_counts("normal", 300, never) == {"normal": 300}
    assert synthesis_counts("balanced", 300, labels) == {"normal": 150, "pneumonia": 150}
    assert synthesis_counts("balanced", 301, labels) == {"normal": 151, "pneumonia": 150}  # the odd one: minority
    assert synthesis_counts("balanced", 301, lambda: 1 - PNEUMONIA_MAJORITY) == {"normal": 150, "pneumonia": 151}
    assert synthesis_counts("balanced", 1, labels) == {"normal": 1}
    tie = lambda: np.array([0, 1])  # noqa: E731
    assert synthesis_counts("minority", 10, tie) == {"normal": 5, "pneumonia": 5}  # a tie: as balanced
    for choice in SYNTHESIZE:
        assert sum(synthesis_counts(choice, 301, labels).values()) == 301
    with pytest.raises(ValueError, match="--synthesize"):
        synthesis_counts("majority", 3, labels)


@pytest.fixture(scope="module", params=[0.74, 0.3], ids=["pneumonia-majority", "normal-majority"])
def imbalanced(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, float]:
    root = tmp_path_factory.mktemp("imbalanced")
    return write_phantom_dataset(root, num_patients=60, image_size=16, positive_fraction=request.param), request.param


def experiment_args(data_dir: Path, *argv: str):
    parser = build_parser(["experiment"])
    return parser.parse_args(["experiment", "--dataset", "phantom", "--data-dir", str(data_dir), *argv])


def generate_steps(args) -> list[tuple[str, str | None, int]]:
    return [(s.name, s.config.label, s.config.num_images) for s in plan(args) if s.step == "generate"]


def test_the_plan_synthesizes_the_development_minority_with_a_conditional_gan(imbalanced) -> None:
    data_dir, positive_fraction = imbalanced
    develop, holdout = develop_and_holdout(load_dataset("phantom", data_dir))
    args = experiment_args(data_dir)  # --synthesize minority is the default
    labels = develop_labels(args)
    assert np.array_equal(labels, develop.labels) and len(labels) + len(holdout) == 60  # never the hold-out
    minority = "normal" if positive_fraction > 0.5 else "pneumonia"
    assert minority_class(develop.labels) == minority
    assert generate_steps(args) == [("generate-synthetic", minority, 300)]  # the quick profile's 300
    steps = plan(args)
    assert next(s for s in steps if s.step == "gan").config.conditional
    assert all(s.config.synthetic_dir == steps[1].config.output_dir for s in steps if s.step == "classifier")


def test_balanced_plans_one_generate_step_per_class_into_one_folder(imbalanced) -> None:
    data_dir, _ = imbalanced
    args = experiment_args(data_dir, "--synthesize", "balanced", "--generate-args", "--num-images 41")
    steps = generate_steps(args)
    assert [(name, label) for name, label, _ in steps] == [
        ("generate-synthetic (normal)", "normal"),
        ("generate-synthetic (pneumonia)", "pneumonia"),
    ]
    assert sum(count for _, _, count in steps) == 41 and {count for _, _, count in steps} == {20, 21}
    configs = [s.config for s in plan(args) if s.step == "generate"]
    assert len({c.output_dir for c in configs}) == 1
    assert generate_steps(experiment_args(data_dir, "--synthesize", "pneumonia")) == [
        ("generate-synthetic", "pneumonia", 300)
    ]


def test_the_class_is_chosen_with_synthesize_only(tmp_path: Path) -> None:
    args = experiment_args(tmp_path, "--synthesize", "normal", "--generate-args", "--label pneumonia")
    with pytest.raises(ConfigError, match="--synthesize"):
        plan(args)


def test_one_folder_per_class_merges_into_one_pool_of_both_classes(tmp_path: Path) -> None:
    folders = []
    for label, name in ((0, "normal"), (1, "pneumonia")):
        folder = write_synthetic_folder(tmp_path / name, 3)
        rows = [ManifestRow(f"synthetic_{name}_{i:06d}.png", label, 0, i, "0" * 64) for i in range(3)]
        for i, row in enumerate(rows):
            (folder / f"synthetic_{i:04d}.png").rename(folder / row.file)
        write_manifest(folder, rows)
        folders.append(folder)
    merged = merge_synthetic_folders(folders, tmp_path / "merged")
    assert len(merged) == 6
    pool = load_synthetic(tmp_path / "merged")  # what the classifier reads: labels from the manifest
    assert sorted(pool.labels.tolist()) == [0, 0, 0, 1, 1, 1]
    assert (tmp_path / "merged" / MANIFEST_NAME).is_file()
    with pytest.raises(DatasetError, match="more than one"):
        merge_synthetic_folders([folders[0], folders[0]], tmp_path / "again")
