"""Compare the strategies and judge the synthetic images: did GAN augmentation help, and at what risk?

Reads the metrics of baseline, augmented and curriculum training, tests their differences image by image on the
hold-out (DeLong, McNemar, bootstrap intervals, minimum detectable effect; services.analyzer.holdout_tests) beside
the fold models' spread, says when the run is a smoke run that cannot decide the question, measures synthetic image
quality (SSIM, Fréchet distance in the baseline classifier's feature space, Inception FID where torch-fidelity's
weights are cached), searches for synthetic near-copies of real patients' images (memorization), trains on synthetic
and tests on real for a conditional generator (TSTR), and draws Grad-CAM maps. Writes comparison_report.txt (the
answer in plain words), analysis_summary.json (every number in the report) and the figures to --analysis-dir. A
missing input (metrics file, model, synthetic folder, dataset) skips what needs it, with a line in the report.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from services.analyzer import image_quality, plots
from services.analyzer.holdout_tests import compare_on_holdout, load_predictions
from services.analyzer.repeats import seed_paired_comparisons
from services.analyzer.report import (
    CANDIDATES,
    MATCHED_REFERENCE,
    REFERENCE,
    REFERENCES,
    STRATEGIES,
    StrategyResults,
    compare_strategies,
    load_results,
    note,
    overall_verdict,
    render_report,
    smoke_run,
)
from services.analyzer.shift_tests import compare_under_shift, load_shifted
from shared import layout
from shared.cards import dataset_card, model_card
from shared.checkpoints import load_checkpoint
from shared.configs import AnalysisConfig
from shared.datasets import CLASS_NAMES, NORMAL, PNEUMONIA, LabelledImages, load_dataset
from shared.diversity import compare_diversity
from shared.images import atomic_write_bytes, atomic_write_json
from shared.models.classifier import classifier_transform, load_classifier
from shared.predictions import HoldoutPredictions
from shared.runtime import seed_everything, select_device
from shared.splits import develop_and_holdout
from shared.synthetic import load_synthetic

log = logging.getLogger(__name__)

DIVERSITY_PAIRS = 200  # random distinct pairs per set for mean pairwise MS-SSIM

NUM_CLOSEST_PAIRS = 8


def add_arguments(parser: argparse.ArgumentParser) -> None:
    AnalysisConfig.add_arguments(parser)


def strategy_table(results: dict[str, StrategyResults]) -> dict[str, dict[str, Any]]:
    """Per strategy: the CV summary and the hold-out metrics the report quotes."""
    table = {}
    for strategy, found in results.items():
        cv = None
        if found.cv is not None:
            cv = {
                "n_folds": len(found.cv.get("folds", [])),
                **{k: found.cv.get(k) for k in ("average", "std_dev", "ci95")},
            }
        final = found.final or {}
        table[strategy] = {
            "cv": cv,
            "holdout": final.get("holdout"),
            "holdout_summary": final.get("holdout_summary"),
            "holdout_per_fold": final.get("holdout_per_fold"),
            "n_fold_models": len(final.get("holdout_per_fold", [])),
            "selected_fold": final.get("selected_fold"),
            "n_train_real": final.get("n_train_real"),
            "n_synthetic_pool": final.get("n_synthetic_pool"),
            "class_mix": final.get("class_mix"),
        }
    return table


def plot_metrics(results: dict[str, StrategyResults], out: Path, skipped: list[str]) -> list[str]:
    """Training curves and cross-validation bars of the strategies side by side; the file names written."""
    written = []
    histories = {s: r.history for s, r in results.items() if r.history}
    if histories:
        for name, keys, ylabel in (
            ("loss", ("train_loss", "val_loss"), "cross-entropy"),
            ("accuracy", ("train_acc", "val_acc"), "accuracy"),
            ("synthetic_ratio", ("synthetic_ratio",), "synthetic share of training samples"),
        ):
            plots.plot_training_curves(histories, keys, ylabel, out / f"comparison_{name}.png")
            written.append(f"comparison_{name}.png")
    else:
        note(skipped, "training-curve figures: no training history found")
    summaries = {s: r.cv for s, r in results.items() if r.cv}
    if summaries:
        plots.plot_cv_comparison(summaries, out / "cv_comparison.png")
        written.append("cv_comparison.png")
    else:
        note(skipped, "cv_comparison.png: no cross-validation summary found")
    return written


def load_splits(options: AnalysisConfig, skipped: list[str]) -> tuple[LabelledImages, LabelledImages] | None:
    """(development, hold-out) images, or None when the data directory does not exist."""
    if not Path(options.data_dir).exists():
        note(skipped, f"dataset: {options.data_dir} not found; every analysis of images needs it")
        return None
    return develop_and_holdout(load_dataset(options.dataset, options.data_dir))


def load_synthetic_images(options: AnalysisConfig, skipped: list[str]) -> LabelledImages | None:
    """The synthetic images, or None when the folder does not exist."""
    if not Path(options.synthetic_dir).exists():
        note(skipped, f"synthetic images: {options.synthetic_dir} not found; image quality and memorization need them")
        return None
    return load_synthetic(options.synthetic_dir)


def load_model(
    options: AnalysisConfig, strategy: str, device: torch.device, skipped: list[str], purpose: str
) -> tuple[torch.nn.Module, dict[str, Any]] | None:
    """(model, config) of `{model-dir}/{strategy}_{arch}.pth`, or None when the file does not exist."""
    path = Path(options.model_dir) / layout.strategy_model_name(strategy, options.arch)
    if not path.is_file():
        note(skipped, f"{purpose}: model {path} not found")
        return None
    return load_classifier(path, device)


def image_name(images: LabelledImages, index: int) -> str:
    """A file path where the images are files, else the patient id."""
    paths = getattr(images, "paths", None)
    return str(paths[index]) if paths is not None else str(images.patient_ids[index])


@dataclass
class ImageSets:
    """The real reference and synthetic images, decoded once: pixels at the synthetic images' size (uint8 N x H x W)
    and, with a baseline model, its penultimate features (N x D)."""

    develop: LabelledImages
    synthetic: LabelledImages
    reference: np.ndarray  # indices into develop
    synth_indices: np.ndarray  # indices into synthetic
    size: tuple[int, int]  # width, height
    real_px: np.ndarray
    synth_px: np.ndarray
    real_feat: np.ndarray | None
    synth_feat: np.ndarray | None

    @property
    def label(self) -> int:
        """The class SSIM, diversity and Fréchet distances compare: the one most of the drawn synthetic images
        belong to (--synthesize minority on PneumoniaMNIST: normal), on a tie pneumonia. Memorization searches
        every reference image of the synthetic classes."""
        counts = np.bincount(self.synthetic.labels[self.synth_indices], minlength=2)
        return NORMAL if counts[NORMAL] > counts[PNEUMONIA] else PNEUMONIA

    @property
    def class_name(self) -> str:
        return CLASS_NAMES[self.label]

    @property
    def real_same(self) -> np.ndarray:
        """Which reference images are of the compared class."""
        return self.develop.labels[self.reference] == self.label

    @property
    def synth_same(self) -> np.ndarray:
        """Which drawn synthetic images are of the compared class."""
        return self.synthetic.labels[self.synth_indices] == self.label


def draw_reference(options: AnalysisConfig, develop: LabelledImages, synthetic: LabelledImages) -> np.ndarray:
    """Seeded indices of the real reference: the development images of the classes the synthetic set holds (all, or
    --num-reference-real), or only --num-ssim-real of them when the SSIM distribution is all that runs."""
    rng = np.random.default_rng(options.seed)
    if options.skip_fidelity and options.skip_memorization:
        same = np.flatnonzero(np.isin(develop.labels, np.unique(synthetic.labels)))
        return rng.permutation(same)[: options.num_ssim_real]
    candidates = np.flatnonzero(np.isin(develop.labels, np.unique(synthetic.labels)))
    return rng.permutation(candidates)[: options.num_reference_real or None]


def describe_image_sets(
    options: AnalysisConfig,
    develop: LabelledImages,
    synthetic: LabelledImages,
    reference: np.ndarray,
    baseline: tuple[torch.nn.Module, dict[str, Any]] | None,
    device: torch.device,
) -> ImageSets:
    """Draw (seeded) up to --num-ssim-synth synthetic images; decode and describe them and the reference once."""
    synth_indices = np.random.default_rng(options.seed + 1).permutation(len(synthetic))[: options.num_ssim_synth]
    size = synthetic.load(int(synth_indices[0])).size  # compare at the generator's resolution
    model, transform = (baseline[0], classifier_transform(baseline[1], train=False)) if baseline else (None, None)
    real_px, real_feat = image_quality.describe(develop, reference, size, model, transform, device, desc="real")
    synth_px, synth_feat = image_quality.describe(
        synthetic, synth_indices, size, model, transform, device, desc="synthetic"
    )
    return ImageSets(develop, synthetic, reference, synth_indices, size, real_px, synth_px, real_feat, synth_feat)


def analyze_ssim(options: AnalysisConfig, sets: ImageSets, device: torch.device, out: Path) -> dict[str, Any]:
    """Synthetic images' mean SSIM against --num-ssim-real real images of their class; ssim_distribution.png."""
    real = sets.real_px[sets.real_same][: options.num_ssim_real]
    ssim = {"class": sets.class_name, **image_quality.ssim_distribution(sets.synth_px[sets.synth_same], real, device)}
    plots.plot_ssim_distribution(
        ssim.pop("synthetic_vs_real_values"), ssim.pop("real_vs_real_values"), out / "ssim_distribution.png"
    )
    return ssim


def analyze_diversity(options: AnalysisConfig, sets: ImageSets) -> dict[str, Any]:
    """Mean pairwise MS-SSIM among synthetic and among real images of the compared class at the generator's
    resolution; warns when the synthetic set is clearly less diverse (mode collapse)."""
    real = sets.real_px[sets.real_same].astype(np.float64) / 255.0
    synthetic = sets.synth_px[sets.synth_same].astype(np.float64) / 255.0
    result = compare_diversity(real, synthetic, num_pairs=DIVERSITY_PAIRS, seed=options.seed).to_dict()
    result["class"] = sets.class_name
    if result["mode_collapse"]:
        log.warning(
            "possible mode collapse: synthetic mean pairwise MS-SSIM %.3f vs real %.3f",
            result["synthetic"]["mean"],
            result["real"]["mean"],
        )
    return result


def analyze_fidelity(
    options: AnalysisConfig, sets: ImageSets, device: torch.device, skipped: list[str]
) -> dict[str, Any]:
    """Fréchet distances between real and synthetic images of the compared class, each beside its real-vs-real
    floor: in the
    baseline classifier's feature space (when there is a baseline model) and, where torch-fidelity's weights are
    cached, in Inception's (Inception FID)."""
    found: dict[str, Any] = {}
    real_px, synth_px = sets.real_px[sets.real_same], sets.synth_px[sets.synth_same]
    n = image_quality.floor_set_size(len(real_px), len(synth_px))
    if n < 2:
        note(skipped, f"Fréchet distances: need at least 4 real and 2 synthetic {sets.class_name} images")
        return found
    if sets.real_feat is not None and sets.synth_feat is not None:
        found["frechet_classifier"] = {
            "model": f"{REFERENCE}_{options.arch}",
            "class": sets.class_name,
            **image_quality.frechet_with_floor(sets.real_feat[sets.real_same], sets.synth_feat[sets.synth_same]),
        }
    weights, why = image_quality.inception_weights()
    if weights is None:
        note(skipped, f"Inception FID: {why}")
    else:
        found["inception_fid"] = image_quality.frechet_with_floor(
            image_quality.inception_features(real_px[: 2 * n], weights, device),
            image_quality.inception_features(synth_px[:n], weights, device),
        )
    return found


def analyze_memorization(options: AnalysisConfig, sets: ImageSets, device: torch.device, out: Path) -> dict[str, Any]:
    """Each synthetic image's nearest real reference image; near-copies named; memorization_closest_pairs.png."""
    memo = image_quality.memorization_check(
        sets.synth_px, sets.real_px, options.memorization_threshold, sets.synth_feat, sets.real_feat, device
    )
    ssim_values, nearest = memo["nearest_ssim_values"], memo["nearest_real"]

    def pair(i: int) -> dict[str, Any]:
        return {
            "synthetic": image_name(sets.synthetic, int(sets.synth_indices[i])),
            "real": image_name(sets.develop, int(sets.reference[nearest[i]])),
            "ssim": ssim_values[i],
        }

    closest = [int(i) for i in np.argsort(-np.asarray(ssim_values), kind="stable")[:NUM_CLOSEST_PAIRS]]
    pictures = []
    for i in closest:
        flag = " NEAR-COPY" if ssim_values[i] >= options.memorization_threshold else ""
        pictures.append((sets.synth_px[i], sets.real_px[nearest[i]], f"SSIM {ssim_values[i]:.3f}{flag}"))
    plots.plot_image_pairs(pictures, out / "memorization_closest_pairs.png")
    features = memo["feature_distance"]
    return {
        "image_size": [sets.size[1], sets.size[0]],
        **{k: memo[k] for k in ("n_synthetic", "n_real", "threshold", "nearest_ssim", "real_nearest_ssim")},
        "n_flagged": memo["n_flagged"],
        "flagged": [pair(i) for i in memo["flagged_indices"]],
        "closest_pairs": [pair(i) for i in closest],
        "feature_distance": features and {k: v for k, v in features.items() if k != "nearest_real"},
    }


def analyze_images(
    options: AnalysisConfig,
    develop: LabelledImages,
    synthetic: LabelledImages,
    device: torch.device,
    out: Path,
    summary: dict[str, Any],
    skipped: list[str],
) -> list[str]:
    """SSIM distribution, Fréchet distances, Inception FID and the memorization check; fills `summary`, returns the
    figures written."""
    written: list[str] = []
    baseline = None
    if not (options.skip_fidelity and options.skip_memorization):
        baseline = load_model(options, REFERENCE, device, skipped, "classifier-feature distances")
    reference = draw_reference(options, develop, synthetic)
    if len(reference) < 2:
        note(skipped, "image quality and memorization: fewer than 2 development images of the synthetic classes")
        return written
    log.info(
        "describing %d synthetic and %d real reference images",
        min(len(synthetic), options.num_ssim_synth),
        len(reference),
    )
    sets = describe_image_sets(options, develop, synthetic, reference, baseline, device)
    log.info("SSIM, diversity and Fréchet distances compare %s images", sets.class_name)
    if options.skip_ssim:
        note(skipped, "SSIM distribution: --skip-ssim")
    elif not (sets.real_same.sum() >= 2 and sets.synth_same.sum() >= 1):
        note(skipped, f"SSIM distribution: needs at least 2 real and 1 synthetic {sets.class_name} images")
    else:
        summary["ssim"] = analyze_ssim(options, sets, device, out)
        written.append("ssim_distribution.png")
    if sets.real_same.sum() >= 2 and sets.synth_same.sum() >= 2:
        summary["diversity"] = analyze_diversity(options, sets)
    else:
        note(skipped, f"diversity (MS-SSIM): needs at least 2 real and 2 synthetic {sets.class_name} images")
    if options.skip_fidelity:
        note(skipped, "Fréchet distances and Inception FID: --skip-fidelity")
    else:
        summary.update(analyze_fidelity(options, sets, device, skipped))
    if options.skip_memorization:
        note(skipped, "memorization check: --skip-memorization")
    else:
        summary["memorization"] = analyze_memorization(options, sets, device, out)
        log.info(
            "memorization: %d near-copies among %d synthetic images",
            summary["memorization"]["n_flagged"],
            len(sets.synth_px),
        )
        written.append("memorization_closest_pairs.png")
    return written


def analyze_tstr(
    options: AnalysisConfig, develop: LabelledImages, holdout: LabelledImages, device: torch.device, skipped: list[str]
) -> dict[str, Any] | None:
    """Train-on-synthetic / test-on-real for a conditional generator; None (with a reason) otherwise."""
    path = Path(options.gan_model_path)
    if not path.is_file():
        note(skipped, f"TSTR: generator {path} not found")
        return None
    if not load_checkpoint(path, "dcgan-generator")["config"].get("conditional"):
        note(skipped, f"TSTR: {path} is an unconditional generator (one class only): it cannot make a labelled set")
        return None
    from services.analyzer.tstr import run_tstr  # imported here: it pulls in the trainer and the generator

    return run_tstr(
        str(path),
        develop,
        holdout,
        options.tstr_images,
        options.tstr_epochs,
        options.tstr_image_size,
        options.seed,
        device,
    )


def analyze_gradcam(
    options: AnalysisConfig,
    holdout: LabelledImages,
    synthetic: LabelledImages | None,
    device: torch.device,
    out: Path,
    skipped: list[str],
) -> dict[str, Any] | None:
    """gradcam_comparison.png: one row per strategy's model, columns = hold-out positives and negatives and
    synthetic images; returns the samples used and each model's P(pneumonia) for them."""
    from shared.gradcam import gradcam_samples  # imported here: pytorch-grad-cam is slow to import

    rng = np.random.default_rng(options.seed)
    k = options.num_gradcam_samples
    kinds = [("real pneumonia", holdout, np.flatnonzero(holdout.labels == PNEUMONIA))]
    kinds.append(("real normal", holdout, np.flatnonzero(holdout.labels != PNEUMONIA)))
    if synthetic is not None:
        kinds.append(("synthetic", synthetic, np.arange(len(synthetic))))
    samples = [(kind, images, int(i)) for kind, images, pool in kinds for i in rng.permutation(pool)[:k]]
    pictures = [images.load(i) for _, images, i in samples]
    rows, record = [], {"figure": "gradcam_comparison.png", "samples": [], "models": {}}
    record["samples"] = [{"kind": kind, "image": image_name(images, i)} for kind, images, i in samples]
    for strategy in STRATEGIES:
        loaded = load_model(options, strategy, device, skipped, "Grad-CAM")
        if loaded is None:
            continue
        results = gradcam_samples(*loaded, pictures, device)
        titled = [
            (px, cam, f"{kind}\nP(pneu)={p:.2f}") for (kind, _, _), (px, cam, p) in zip(samples, results, strict=True)
        ]
        rows.append((strategy, titled))
        record["models"][strategy] = [p for _, _, p in results]
    if not rows:
        note(skipped, "Grad-CAM: no strategy model found")
        return None
    plots.plot_gradcam_grid(rows, out / record["figure"])
    return record


def write_cards(options: AnalysisConfig, results: dict[str, StrategyResults], out: Path) -> list[str]:
    """dataset_card.md, and model_cards/<strategy>.md for each strategy whose final metrics were found."""
    datasets = {found.final.get("dataset") for found in results.values() if found.final} - {None}
    dataset = datasets.pop() if len(datasets) == 1 else options.dataset
    atomic_write_bytes(out / layout.DATASET_CARD, dataset_card(dataset).encode())
    written = [layout.DATASET_CARD]
    for strategy, found in results.items():
        if found.final is None:
            continue
        name = f"{layout.MODEL_CARDS_DIR}/{strategy}.md"
        (out / layout.MODEL_CARDS_DIR).mkdir(exist_ok=True)
        atomic_write_bytes(out / name, model_card(strategy, found.final, cv=found.cv).encode())
        written.append(name)
    return written


def _no_check() -> None:
    """The default `check` of analyze: nobody can stop the analysis."""


def analyze(options: AnalysisConfig, check: Callable[[], None] = _no_check) -> dict[str, Any]:
    """Run every analysis the inputs allow; write the figures, analysis_summary.json and comparison_report.txt.

    `check` runs between the phases (metrics, figures, data, image quality, TSTR, Grad-CAM, writing); raising
    there stops the analysis before the report is written (the analyzer service stops on a passed deadline).
    """
    seed_everything(options.seed)
    device = select_device(options.cpu)
    out = Path(options.analysis_dir)
    out.mkdir(parents=True, exist_ok=True)
    skipped: list[str] = []
    written: list[str] = []

    results = load_results(Path(options.metrics_dir), skipped)
    strategies = tuple(dict.fromkeys((*STRATEGIES, MATCHED_REFERENCE)))
    by_repeat: dict[str, dict[int, HoldoutPredictions]] = {}
    predictions = load_predictions(Path(options.metrics_dir), strategies, skipped, by_repeat)
    check()
    summary: dict[str, Any] = {
        "inputs": options.model_dump(mode="json"),
        "smoke_run": smoke_run(results),
        "strategies": strategy_table(results),
        "holdout_tests": compare_on_holdout(predictions, CANDIDATES, REFERENCES, skipped, seed=options.seed),
        "comparisons": compare_strategies(results, skipped),
        "repeats": seed_paired_comparisons(Path(options.metrics_dir), by_repeat, CANDIDATES, REFERENCES),
        "shift": compare_under_shift(
            load_shifted(Path(options.metrics_dir), strategies, skipped),
            predictions,
            {s: r.final for s, r in results.items()},
            CANDIDATES,
            REFERENCES,
            seed=options.seed,
        ),
        "ssim": None,
        "frechet_classifier": None,
        "inception_fid": None,
        "memorization": None,
        "tstr": None,
        "gradcam": None,
    }
    if options.skip_plots:
        note(skipped, "training-curve and cross-validation figures: --skip-plots")
    else:
        written += plot_metrics(results, out, skipped)

    check()
    splits = load_splits(options, skipped)
    needs_images = not (options.skip_ssim and options.skip_fidelity and options.skip_memorization)
    synthetic = load_synthetic_images(options, skipped) if needs_images or not options.skip_gradcam else None
    if splits is not None:
        develop, holdout = splits
        if needs_images and synthetic is not None:
            written += analyze_images(options, develop, synthetic, device, out, summary, skipped)
            check()
        if options.skip_tstr:
            note(skipped, "TSTR: --skip-tstr")
        else:
            summary["tstr"] = analyze_tstr(options, develop, holdout, device, skipped)
            check()
        if options.skip_gradcam:
            note(skipped, "Grad-CAM: --skip-gradcam")
        else:
            summary["gradcam"] = analyze_gradcam(options, holdout, synthetic, device, out, skipped)
            if summary["gradcam"] is not None:
                written.append(summary["gradcam"]["figure"])

    check()
    written += write_cards(options, results, out)
    summary["skipped"] = skipped
    summary["outputs"] = [*written, layout.ANALYSIS_SUMMARY, layout.COMPARISON_REPORT]
    atomic_write_json(out / layout.ANALYSIS_SUMMARY, summary)
    atomic_write_bytes(out / layout.COMPARISON_REPORT, render_report(summary).encode())
    log.info("wrote %s to %s", ", ".join(summary["outputs"]), out)
    return summary


def main(args: argparse.Namespace) -> int:
    options = AnalysisConfig.from_args(args)
    summary = analyze(options)
    if summary["smoke_run"]:
        print(f"SMOKE RUN: cannot decide whether the synthetic images help ({summary['smoke_run']})")
    for strategy in CANDIDATES:
        print(overall_verdict(summary["holdout_tests"], strategy))
    report = Path(options.analysis_dir) / layout.COMPARISON_REPORT
    print(f"{len(summary['skipped'])} analyses skipped; report: {report}")
    return 0
