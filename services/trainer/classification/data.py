"""A strategy's data: real-only checks, subsets, folds, class weights, the synthetic share per epoch, loaders."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch.utils.data import ConcatDataset, DataLoader, Dataset, WeightedRandomSampler

from shared.configs import ClassifierTrainingConfig
from shared.curriculum import Schedule, ratio_at, synthetic_count
from shared.datasets import LabelledImages, TorchImageDataset
from shared.distributed import Distributed
from shared.errors import ConfigError, DatasetError
from shared.splits import holdout_indices, patient_kfold
from shared.synthetic import SYNTHETIC_PREFIX


def assert_real_only(images: LabelledImages, where: str) -> None:
    """Validation folds and the hold-out must never hold a synthetic image."""
    synthetic = [pid for pid in images.patient_ids if pid.startswith(SYNTHETIC_PREFIX)]
    if synthetic:
        raise RuntimeError(f"{len(synthetic)} synthetic images in the {where} (e.g. {synthetic[0]}): refusing to go on")


def subsample(images: LabelledImages, max_images: int, seed: int) -> LabelledImages:
    """A seeded, class-stratified, patient-level subset of about `max_images` images (all of them if fewer)."""
    if max_images >= len(images):
        return images
    try:
        _, kept = holdout_indices(images.patient_ids, images.labels, fraction=max_images / len(images), seed=seed)
    except ConfigError as exc:
        raise ConfigError(f"--max-images {max_images} is too small to keep patients of both classes") from exc
    return images.subset(kept)


def fold_indices(
    develop: LabelledImages, k: int, val_fraction: float, seed: int
) -> list[tuple[np.ndarray, np.ndarray]]:
    """(train, validation) image indices into `develop`: k patient-level folds, or one split for k = 1. The folds
    are cut from real images only: synthetic ones are added to a training fold afterwards, never to a validation
    fold (RuntimeError otherwise)."""
    assert_real_only(develop, "development set the folds are cut from")
    if k == 1:
        return [holdout_indices(develop.patient_ids, develop.labels, fraction=val_fraction, seed=seed)]
    return patient_kfold(develop.patient_ids, develop.labels, k, seed=seed)


def class_weights(labels: np.ndarray) -> torch.Tensor:
    """Inverse class frequencies, n / (2 n_c), so that both classes weigh as much in total."""
    counts = np.bincount(labels, minlength=2)
    if (counts == 0).any():
        raise DatasetError(f"a training fold lacks a class (counts normal/pneumonia = {counts.tolist()})")
    return torch.tensor(len(labels) / (2.0 * counts), dtype=torch.float32)


def synthetic_plan(sampling: str, epochs: int, n_real: int, pool_size: int, schedule: Schedule | None) -> list[int]:
    """How many synthetic samples each epoch of a fold draws (`sampling`: ClassifierTrainingConfig.sampling).

    A --match-compute run draws this same plan, from resampled real images instead: the experiment's
    baseline-matched is augmented's control, every epoch n_real + pool_size images, so its images per epoch and
    optimizer steps (and OneCycle schedule) are exactly augmented's. It matches augmented, not curriculum:
    curriculum's synthetic share changes per epoch and is capped by the pool, so it trains at most augmented's
    steps; its comparison with the plain baseline is not compute-matched (a baseline-matched-curriculum run
    would be, and --match-compute --use-curriculum trains it)."""
    if sampling == "baseline":
        return [0] * epochs
    if sampling == "augmented":
        return [pool_size] * epochs
    assert schedule is not None
    return [synthetic_count(ratio_at(schedule, epoch), n_real, pool_size) for epoch in range(epochs)]


def resampled_real(train_real: LabelledImages, count: int, rng: np.random.Generator) -> LabelledImages:
    """`count` images of the real training fold drawn with replacement (baseline-matched's extra samples)."""
    drawn = train_real.subset(np.sort(rng.choice(len(train_real), size=count, replace=True)))
    assert_real_only(drawn, "resampled real images of baseline-matched")
    return drawn


def class_mix(labels: np.ndarray) -> dict[str, int]:
    """{"normal": n, "pneumonia": n} of `labels`."""
    counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=2)
    return {"normal": int(counts[0]), "pneumonia": int(counts[1])}


def training_loader(
    real: LabelledImages,
    synthetic: LabelledImages | None,
    transform: Callable,
    options: ClassifierTrainingConfig,
    weights: torch.Tensor,
    ctx: Distributed,
    shuffle_seed: int,
    epoch: int,
) -> DataLoader:
    """One epoch's training data: the real training fold plus the synthetic images drawn for it (this rank's shard
    of them, shuffled by `shuffle_seed` and `epoch`, when there are several processes)."""
    datasets: list[Dataset] = [TorchImageDataset(real, transform)]
    labels = [real.labels]
    if synthetic is not None and len(synthetic):
        datasets.append(TorchImageDataset(synthetic, transform))
        labels.append(synthetic.labels)
    dataset = ConcatDataset(datasets)
    sampler = ctx.sampler(dataset, shuffle_seed, epoch)
    if options.class_balance == "sampler":
        sample_weights = weights[torch.from_numpy(np.concatenate(labels))].double()
        sampler = WeightedRandomSampler(sample_weights, num_samples=len(dataset), replacement=True)
    return DataLoader(
        dataset,
        batch_size=ctx.per_rank_batch_size(options.batch_size),
        shuffle=sampler is None,
        sampler=sampler,
        num_workers=options.workers,
        pin_memory=torch.cuda.is_available() and not options.cpu,
    )


def evaluation_loader(images: LabelledImages, transform: Callable, options: ClassifierTrainingConfig) -> DataLoader:
    return DataLoader(
        TorchImageDataset(images, transform),
        batch_size=options.batch_size,
        shuffle=False,
        num_workers=options.workers,
        pin_memory=torch.cuda.is_available() and not options.cpu,
    )
