"""Procedural chest-X-ray-like images, written in the RSNA layout, for tests and runs without real data.

Each image: dark background, body, two dark lung fields, curved ribs, heart shadow, spine, clavicles and
noise, with the anatomy varied per patient. Positives ("Lung Opacity") carry 1-3 blurry opacities inside the
lungs, of varying size, place and density (faint ones are hard to see), recorded as boxes like RSNA's.
Negatives are "Normal" or "No Lung Opacity / Not Normal" (an enlarged heart: abnormal, but no pneumonia).
Seeded: the same arguments give byte-identical files.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np
from PIL import Image

from shared.datasets.rsna import TEST_DIR, TRAIN_CSV, TRAIN_IMAGES
from shared.errors import ConfigError

TEST_CSV = "stage2_test_metadata.csv"
MIN_IMAGE_SIZE = 16
BOX_COLUMNS = ["patientId", "x", "y", "width", "height", "Target", "class"]
NEGATIVE_CLASSES = ("Normal", "No Lung Opacity / Not Normal")


def write_phantom_dataset(
    out_dir: Path,
    num_patients: int = 400,
    image_size: int = 64,
    positive_fraction: float = 0.4,
    num_test: int = 20,
    seed: int = 0,
) -> Path:
    """Write `num_patients` labelled images and `num_test` unlabelled ones into `out_dir`; return `out_dir`."""
    if image_size < MIN_IMAGE_SIZE:
        raise ConfigError(f"image size must be at least {MIN_IMAGE_SIZE}, got {image_size}")
    num_positive = round(num_patients * positive_fraction)
    if not 0 < num_positive < num_patients:
        raise ConfigError(
            f"{num_patients} patients at positive fraction {positive_fraction} leave a class empty; "
            "a phantom dataset needs both normal and pneumonia patients"
        )
    if num_test < 0:
        raise ConfigError(f"number of test images must be >= 0, got {num_test}")

    rng = np.random.default_rng(seed)
    positive = rng.permutation(np.arange(num_patients) < num_positive)
    (out_dir / TRAIN_IMAGES).mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []
    for index, is_positive in enumerate(positive):
        patient_id = f"phantom-{index:05d}"
        class_name = "Lung Opacity" if is_positive else NEGATIVE_CLASSES[rng.integers(2)]
        image, boxes = draw_chest(
            rng,
            image_size,
            num_opacities=rng.integers(1, 4) if is_positive else 0,
            enlarged_heart=class_name == "No Lung Opacity / Not Normal",
        )
        write_png(image, out_dir / TRAIN_IMAGES / f"{patient_id}.png")
        empty_box = {"x": "", "y": "", "width": "", "height": ""}
        for box in boxes or [empty_box]:
            rows.append({"patientId": patient_id, **box, "Target": int(is_positive), "class": class_name})
    write_csv(out_dir / TRAIN_CSV, BOX_COLUMNS, rows)

    (out_dir / TEST_DIR / "Images").mkdir(parents=True, exist_ok=True)
    test_rows = []
    for index in range(num_test):  # unlabelled: their classes are drawn at random and recorded nowhere
        patient_id = f"phantom-test-{index:05d}"
        image, _ = draw_chest(rng, image_size, num_opacities=rng.integers(0, 4), enlarged_heart=rng.random() < 0.3)
        write_png(image, out_dir / TEST_DIR / "Images" / f"{patient_id}.png")
        test_rows.append({"patientId": patient_id, "PredictionString": ""})
    write_csv(out_dir / TEST_CSV, ["patientId", "PredictionString"], test_rows)
    return out_dir


def draw_chest(
    rng: np.random.Generator, size: int, num_opacities: int, enlarged_heart: bool
) -> tuple[np.ndarray, list[dict[str, int]]]:
    """One size x size uint8 image and its opacity boxes (x, y, width, height in pixels).

    Structures add up as X-ray attenuation (bone and fluid high, air low); the film shows 1 - exp(-attenuation).
    """
    # Chest coordinates: [-1, 1] across the image, y growing downwards; jitter moves and scales the chest.
    coords = (np.arange(size) + 0.5) / size * 2 - 1
    scale, shift_x, shift_y = rng.uniform(0.9, 1.05), rng.uniform(-0.05, 0.05), rng.uniform(-0.05, 0.05)
    x = (coords[None, :] - shift_x) / scale  # 1 x size
    y = (coords[:, None] - shift_y) / scale  # size x 1
    blur = 2.0 / size / scale  # edges soften over about a pixel at any resolution

    trunk = soft_inside(1 - np.hypot(x / rng.uniform(0.82, 0.92), (y - 0.2) / 1.1), 4 * blur)
    shoulders = soft_inside(1 - np.hypot(x / 0.95, (y + 0.62) / 0.25), 4 * blur)
    neck = soft_inside(1 - np.hypot(x / 0.2, (y + 1.0) / 0.4), 2 * blur)
    body = np.maximum(np.maximum(trunk, shoulders), neck)
    attenuation = 0.45 * body * (0.7 + 0.3 * np.clip(1 - x**2, 0, 1))  # thicker in the middle

    lung_w, lung_h, lung_y = rng.uniform(0.3, 0.36), rng.uniform(0.55, 0.65), rng.uniform(-0.1, 0.0)
    lungs = [lung_field(x, y, side * 0.4, lung_y, lung_w, lung_h, blur) for side in (-1, 1)]
    heart_w = rng.uniform(0.44, 0.52) if enlarged_heart else rng.uniform(0.3, 0.36)  # cardiomegaly: wider
    heart = soft_inside(1 - np.hypot((x - 0.1) / heart_w, (y - 0.2) / rng.uniform(0.2, 0.25)), 6 * blur)
    air = (lungs[0] + lungs[1]) * (1 - heart)  # the heart hides the lung behind it
    texture = smooth_noise(rng, size, cells=8)  # vessels and overlapping soft tissue
    attenuation -= 0.33 * air * (1 + 0.15 * texture)

    rib_y0, rib_gap = rng.uniform(-0.62, -0.55), rng.uniform(0.14, 0.17)
    for k in range(9):  # posterior ribs: bands sloping down and out from the spine
        centre = rib_y0 + rib_gap * k + 0.3 * x**2 + 0.08 * np.abs(x)
        attenuation += 0.1 * np.exp(-(((y - centre) / 0.028) ** 2)) * body * (0.3 + 0.7 * air)
    for side in (-1, 1):  # clavicles
        centre = -0.68 + 0.15 * (side * x - 0.35) ** 2
        attenuation += 0.15 * np.exp(-(((y - centre) / 0.032) ** 2)) * soft_inside(0.7 - np.abs(x), blur)

    mediastinum = soft_inside(0.1 - np.abs(x), 4 * blur) * soft_inside(y + 0.9, 4 * blur)
    spine = soft_inside(0.06 - np.abs(x), blur) * (0.8 + 0.2 * np.cos(2 * np.pi * y / rib_gap))  # vertebrae
    attenuation += 0.15 * mediastinum + 0.05 * heart + 0.2 * spine

    # Drawn before the opacities, so that a patient's film differs from its opacity-free twin only there.
    exposure, noise = rng.uniform(1.6, 2.2), rng.normal(0.0, 0.02, (size, size))
    boxes = []
    for _ in range(num_opacities):
        side = 1 if rng.random() < 0.5 else 0  # 0: the patient's right lung, on the image's left
        cx = (2 * side - 1) * 0.4 + rng.uniform(-0.6, 0.6) * lung_w
        cy = lung_y + rng.uniform(-0.4, 0.7) * lung_h
        sx, sy = rng.uniform(0.07, 0.15), rng.uniform(0.08, 0.18)
        density = rng.uniform(0.12, 0.4)  # faint to dense consolidation
        blob = np.exp(-(((x - cx) / sx) ** 2 + ((y - cy) / sy) ** 2)) * np.clip(
            0.7 + 0.3 * smooth_noise(rng, size, 10), 0, None
        )
        attenuation += density * blob * lungs[side]
        # The box spans +-1.5 sigma, where the opacity has faded to a tenth of its peak.
        left, top = to_pixels(cx - 1.5 * sx, cy - 1.5 * sy, scale, shift_x, shift_y, size)
        right, bottom = to_pixels(cx + 1.5 * sx, cy + 1.5 * sy, scale, shift_x, shift_y, size)
        boxes.append({"x": left, "y": top, "width": right - left, "height": bottom - top})

    film = 1 - np.exp(-exposure * np.clip(attenuation, 0, None)) + noise  # noise: quantum mottle
    return (np.clip(film, 0.0, 1.0) * 255).round().astype(np.uint8), boxes


def soft_inside(distance: np.ndarray, width: float) -> np.ndarray:
    """1 where `distance` (positive inside a shape) exceeds width / 2, 0 below -width / 2, linear between."""
    return np.clip(distance / width + 0.5, 0.0, 1.0)


def lung_field(
    x: np.ndarray, y: np.ndarray, cx: float, cy: float, width: float, height: float, blur: float
) -> np.ndarray:
    """A lung: narrow apex, wide base, its floor the diaphragm dome (lowest at the outer costophrenic angle)."""
    u, v = (x - cx) / width, (y - cy) / height  # v: -1 apex, +1 base
    half_width = 0.8 + 0.2 * np.clip(v, -1, 1)  # widens downwards
    outline = soft_inside(1 - np.hypot(u / half_width, v), 6 * blur)
    dome = 0.75 + 0.3 * (u * np.sign(cx)) + 0.15 * u**2  # floor in units of height
    return outline * soft_inside((dome - v) * height, 4 * blur)


def smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Low-frequency noise in about [-1, 1]: a cells x cells normal grid, upsampled bicubically."""
    grid = Image.fromarray(rng.normal(0.0, 0.5, (cells, cells)).astype(np.float32), mode="F")
    return np.asarray(grid.resize((size, size), Image.Resampling.BICUBIC), dtype=np.float64)


def to_pixels(x: float, y: float, scale: float, shift_x: float, shift_y: float, size: int) -> tuple[int, int]:
    """Chest coordinates to the nearest pixel corner, clipped to the image."""
    column = ((x * scale + shift_x) + 1) / 2 * size
    row = ((y * scale + shift_y) + 1) / 2 * size
    return int(np.clip(round(column), 0, size)), int(np.clip(round(row), 0, size))


def write_png(image: np.ndarray, path: Path) -> None:
    """PNG without timestamps or other metadata, so identical pixels give identical bytes."""
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    path.write_bytes(buffer.getvalue())


def write_csv(path: Path, columns: list[str], rows: list[dict]) -> None:
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
