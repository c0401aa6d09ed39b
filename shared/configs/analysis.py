"""AnalysisConfig: the options of `pneumonia analyze-results` (services.analyzer.analyze_results)."""

from __future__ import annotations

from typing import ClassVar, Literal

from pneumonia_proto.v1 import analyzer_pb2

from shared.configs.base import StepConfig, option
from shared.configs.limits import MAX_EPOCHS, MAX_IMAGE_SIZE, MAX_IMAGES, MAX_SAMPLES, MAX_SEED
from shared.datasets import DATASETS
from shared.models.classifier import ARCHS


class AnalysisConfig(StepConfig):
    """Compare the strategies and judge the synthetic images."""

    request_type: ClassVar = analyzer_pb2.AnalyzeRequest
    request_only: ClassVar = frozenset({"metrics", "models", "synthetic", "output", "dataset", "generator"})

    metrics_dir: str = option("./results/metrics", "train-classifier's metrics JSON files", kind="layout")
    analysis_dir: str = option("./results/analysis", "where the report and figures go", kind="layout")
    model_dir: str = option("./models", "classifier checkpoints {strategy}_{arch}.pth", kind="layout")
    data_dir: str = option("./data/processed", "dataset location", kind="layout")
    synthetic_dir: str = option("./data/synthetic", "synthetic images (generate-synthetic)", kind="layout")
    num_ssim_real: int = option(
        100, "real development-set pneumonia images for the SSIM distribution", ge=1, le=MAX_SAMPLES
    )
    num_ssim_synth: int = option(
        500, "synthetic images for SSIM, Fréchet distances and memorization", ge=1, le=MAX_SAMPLES
    )
    num_gradcam_samples: int = option(3, "Grad-CAM samples of each kind per model", ge=1, le=MAX_SAMPLES)
    cpu: bool = option(False, "force CPU even where CUDA is available")
    skip_plots: bool = option(False, "no training-curve and cross-validation figures")
    skip_ssim: bool = option(False, "no SSIM distribution")
    skip_gradcam: bool = option(False, "no Grad-CAM figure")
    dataset: Literal[DATASETS] = option("rsna", "dataset source", kind="layout")  # type: ignore[valid-type]
    arch: Literal[ARCHS] = option("resnet50", "architecture in the model file names")  # type: ignore[valid-type]
    gan_model_path: str = option("./models/gan/generator_final.pth", "generator checkpoint (for TSTR)", kind="layout")
    seed: int = option(0, "seed for every sample drawn here", ge=0, le=MAX_SEED)
    memorization_threshold: float = option(
        0.95,
        "SSIM to its nearest real image at or above which a synthetic image counts as a near-copy. 0.95: X-rays "
        "of different patients stay well below it (the report prints how close distinct real images come), while a "
        "copy blurred or shifted a little by the generator stays above it",
        gt=0,
        le=1,
    )
    num_reference_real: int = option(
        0,
        "development-set real images searched for near-copies and used for the Fréchet distances; 0 = all "
        "(a sample can miss a copy of an image outside it)",
        ge=0,
        le=MAX_IMAGES,
    )
    tstr_images: int = option(1000, "balanced training images for TSTR and TRTR", ge=1, le=MAX_IMAGES)
    tstr_epochs: int = option(5, "training epochs for TSTR and TRTR", ge=1, le=MAX_EPOCHS)
    tstr_image_size: int = option(32, "input size of the TSTR/TRTR classifier", ge=8, le=MAX_IMAGE_SIZE)
    skip_fidelity: bool = option(False, "no Fréchet distances or Inception FID")
    skip_memorization: bool = option(False, "no memorization check")
    skip_tstr: bool = option(False, "no train-on-synthetic / test-on-real")
