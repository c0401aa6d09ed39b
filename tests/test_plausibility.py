"""The plausibility gate accepts real radiographs and refuses non-radiographs of every kind, with the right reason."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw
from skimage import data as skimage_data

from shared.datasets import load_dataset
from shared.models.classifier import build_classifier, classifier_config, classifier_transform
from shared.plausibility import PlausibilityGate, PpcaScore, fit_gate, verdict
from shared.splits import develop_and_holdout


@pytest.fixture(scope="module")
def trained(phantom_dir: Path):
    """A resnet18 (28 px, 1 channel) trained briefly on phantom radiographs, its transform, gate and hold-out."""
    torch.manual_seed(0)
    develop, holdout = develop_and_holdout(load_dataset("phantom", phantom_dir))
    config = classifier_config("resnet18", 1, 28, "baseline", "none")
    model = build_classifier("resnet18", in_channels=1, image_size=28)
    transform = classifier_transform(config, train=False)
    n_train = 200
    batch = torch.stack([transform(develop.load(i)) for i in range(n_train)])
    labels = torch.as_tensor(develop.labels[:n_train])
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.train()
    for _ in range(2):
        for first in range(0, n_train, 32):
            optimizer.zero_grad()
            loss = torch.nn.functional.cross_entropy(model(batch[first : first + 32]), labels[first : first + 32])
            loss.backward()
            optimizer.step()
    model.eval()
    gate = fit_gate(model, transform, develop.subset(range(n_train)), develop.subset(range(n_train, len(develop))))
    return model, transform, gate, holdout


def test_real_radiographs_are_accepted(trained) -> None:
    model, transform, gate, holdout = trained
    verdicts = [verdict(holdout.load(i), model, transform, gate) for i in range(len(holdout))]
    assert verdicts.count("accepted") / len(verdicts) >= 0.97, {v: verdicts.count(v) for v in set(verdicts)}


def text_image() -> Image.Image:
    img = Image.new("L", (32, 32), 255)
    ImageDraw.Draw(img).text((2, 10), "PDF", fill=0)
    return img


GRADIENT = np.tile(np.linspace(0, 255, 32, dtype=np.uint8), (32, 1))
NON_RADIOGRAPHS = {
    "photo (grey cameraman)": (lambda: Image.fromarray(skimage_data.camera()), "out_of_distribution"),
    "colour photo (astronaut)": (lambda: Image.fromarray(skimage_data.astronaut()), "not_grayscale"),
    "uniform noise": (
        lambda: Image.fromarray(np.random.default_rng(0).integers(0, 256, (32, 32), dtype=np.uint8)),
        "out_of_distribution",
    ),
    "checkerboard": (lambda: Image.fromarray(skimage_data.checkerboard()), "out_of_distribution"),
    "scanned text": (text_image, "out_of_distribution"),
    "blank frame": (lambda: Image.new("L", (32, 32), 128), "constant"),
    "black frame with one dot": (lambda: Image.fromarray(np.pad(np.full((1, 1), 255, np.uint8), 20)), "constant"),
    "thumbnail": (lambda: Image.new("L", (8, 8), 0).resize((8, 8)), "too_small"),
    "panorama strip": (lambda: Image.fromarray(skimage_data.camera()[:128]), "aspect_ratio"),
    "red square": (lambda: Image.new("RGB", (32, 32), (200, 30, 30)), "not_grayscale"),
    "horizontal gradient": (
        lambda: Image.fromarray(np.tile(np.linspace(0, 255, 32, dtype=np.uint8), (32, 1))),
        "out_of_distribution",
    ),
}


@pytest.mark.parametrize("name", sorted(NON_RADIOGRAPHS))
def test_non_radiographs_are_refused_with_the_right_reason(name: str, trained) -> None:
    model, transform, gate, holdout = trained
    make, reason = NON_RADIOGRAPHS[name]
    image = Image.fromarray(255 - np.asarray(holdout.load(0))) if make is None else make()
    assert verdict(image, model, transform, gate) == reason


def test_a_grey_radiograph_saved_as_rgb_is_still_grey(trained) -> None:
    model, transform, gate, holdout = trained
    assert verdict(holdout.load(0).convert("RGB"), model, transform, gate) == verdict(
        holdout.load(0), model, transform, gate
    )


def test_gate_round_trips_through_json(trained) -> None:
    gate = trained[2]
    assert PlausibilityGate.from_dict(gate.to_dict()) == gate
    assert gate.min_side == 16 and gate.min_aspect < 1 < gate.max_aspect
    assert np.isfinite(gate.max_feature_score) and np.isfinite(gate.max_layout_score)
    assert len(gate.features.mean) == 512 and len(gate.layout.mean) == 16 * 16


def test_ppca_score_is_about_one_in_distribution_and_large_outside() -> None:
    rng = np.random.default_rng(0)
    basis = rng.normal(size=(3, 20))
    inside = rng.normal(size=(500, 3)) @ basis + 0.1 * rng.normal(size=(500, 20))
    model = PpcaScore.fit(inside, components=3)
    fresh = rng.normal(size=(500, 3)) @ basis + 0.1 * rng.normal(size=(500, 20))
    assert np.mean(model.score(fresh)) == pytest.approx(1.0, rel=0.15)
    off_plane = fresh + rng.normal(size=(500, 20))  # leaves the 3-d plane the data lives in
    assert np.median(model.score(off_plane)) > 20
    assert PpcaScore(**model.__dict__) == model
