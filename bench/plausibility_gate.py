"""The plausibility gate's decisions: real hold-out radiographs (should pass) and non-radiographs (should not).

    .venv/bin/python bench/plausibility_gate.py --data-dir ../shared/data/pneumoniamnist \
        --model runs/local/storage/models/runs/<run>/classifiers/baseline_resnet18.pth

The model must be one train-classifier saved (its config carries the fitted gate). Every input goes through exactly
the served handler's checks (shared.plausibility: image checks, then the feature distance). Prints the acceptance
rate on the real hold-out and one row per non-radiograph with the gate's reason, as Markdown.
"""

from __future__ import annotations

import argparse
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from skimage import data as skimage_data

from shared.datasets import load_dataset
from shared.models.classifier import classifier_transform, load_classifier
from shared.plausibility import PlausibilityGate, verdict
from shared.splits import develop_and_holdout


def text_page() -> Image.Image:
    img = Image.new("L", (200, 240), 255)
    draw = ImageDraw.Draw(img)
    for row in range(12):
        draw.text((10, 10 + row * 19), "Lorem ipsum dolor sit amet, consectetur", fill=0)
    return img


def rng_image(shape: tuple[int, ...]) -> Image.Image:
    return Image.fromarray(np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8))


def gradient() -> Image.Image:
    return Image.fromarray(np.tile(np.linspace(0, 255, 256, dtype=np.uint8), (256, 1)))


NON_RADIOGRAPHS: dict[str, Callable[[], Image.Image]] = {
    "grey photo (skimage camera)": lambda: Image.fromarray(skimage_data.camera()),
    "grey photo (skimage moon)": lambda: Image.fromarray(skimage_data.moon()),
    "grey texture (skimage brick)": lambda: Image.fromarray(skimage_data.brick()),
    "grey micrograph (skimage cell)": lambda: Image.fromarray(skimage_data.cell()),
    "colour photo (skimage astronaut)": lambda: Image.fromarray(skimage_data.astronaut()),
    "colour photo (skimage coffee)": lambda: Image.fromarray(skimage_data.coffee()),
    "colour photo made grey (coffee)": lambda: Image.fromarray(skimage_data.coffee()).convert("L"),
    "checkerboard": lambda: Image.fromarray(skimage_data.checkerboard()),
    "scanned text page": text_page,
    "uniform noise": lambda: rng_image((64, 64)),
    "horizontal gradient": gradient,
    "blank grey frame": lambda: Image.new("L", (64, 64), 128),
    "black frame": lambda: Image.new("L", (64, 64), 0),
    "thumbnail (8 x 8)": lambda: rng_image((8, 8)),
    "panorama strip (camera, 512 x 128)": lambda: Image.fromarray(skimage_data.camera()[:128]),
    "inverted radiograph (negative of a hold-out image)": None,  # filled in from the data
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--dataset", default="pneumoniamnist")
    parser.add_argument("--data-dir", type=Path, required=True)
    args = parser.parse_args()

    model, config = load_classifier(args.model)
    if "plausibility" not in config:
        raise SystemExit(f"{args.model} carries no plausibility gate (train it with the current train-classifier)")
    gate = PlausibilityGate.from_dict(config["plausibility"])
    transform = classifier_transform(config, train=False)
    _, holdout = develop_and_holdout(load_dataset(args.dataset, args.data_dir))

    real = Counter(verdict(holdout.load(i), model, transform, gate) for i in range(len(holdout)))
    print(
        f"{args.model.name}: gate fitted on {gate.fitted_on} training images; min side {gate.min_side} px, aspect "
        f"{gate.min_aspect:.2f}-{gate.max_aspect:.2f}, min pixel std {gate.min_std:.1f}, layout score <= "
        f"{gate.max_layout_score:.2f}, feature score <= {gate.max_feature_score:.2f}\n"
    )
    accepted = real["accepted"] / len(holdout)
    refused = ", ".join(f"{reason} {n}" for reason, n in sorted(real.items()) if reason != "accepted") or "none"
    print(f"Real hold-out radiographs: {real['accepted']} of {len(holdout)} accepted ({accepted:.1%}).")
    print(f"Refused: {refused}.\n")
    print("| input | gate's decision |\n| --- | --- |")
    for name, make in NON_RADIOGRAPHS.items():
        img = Image.fromarray(255 - np.asarray(holdout.load(0))) if make is None else make()
        print(f"| {name} | {verdict(img, model, transform, gate)} |")


if __name__ == "__main__":
    main()
