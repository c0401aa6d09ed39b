"""The experiment's profiles (how much compute each step gets) and its three classifier strategies.

`quick` fits in about 15 minutes on 2 CPU cores with PneumoniaMNIST (small images, subsets, few epochs, ResNet-18);
`full` keeps the seed's defaults (64 px GAN for 50 epochs, ResNet-50 at 224 px, 15 epochs, 5 folds) for GPU machines.
"""

from __future__ import annotations

from dataclasses import dataclass

STRATEGY_FLAGS = {
    "baseline": "",
    "augmented": "--use-synthetic",
    "curriculum": "--use-synthetic --use-curriculum",
}


@dataclass(frozen=True)
class Profile:
    """Flags per step, as shell words; paths, dataset and seed are added by the driver."""

    gan: str
    generate: str
    classifier: str
    analyze: str


STEP_OVERRIDES = ("gan", "generate", "classifier", "analyze")

PROFILES: dict[str, Profile] = {
    # Sized from measured CPU costs (README, "Results: the quick profile"): ResNet-18 with the small-input stem
    # trains at roughly 30 images/s on 2 cores at 28 px, so every classifier pass is a seeded subset of the data;
    # the whole profile took 14 minutes there.
    "quick": Profile(
        gan="--image-size 32 --num-channels 1 --feature-maps-g 32 --feature-maps-d 32 --epochs 8 --batch-size 64 "
        "--workers 0 --vis-batch-size 64",
        generate="--num-images 300 --batch-size 100",
        # Small batches: on the CPU they cost the same per image and give 4x the optimizer steps of batch 64.
        classifier="--arch resnet18 --weights none --unfreeze --image-size 28 --channels 1 --epochs 3 --batch-size 16 "
        "--lr 0.002 --scheduler onecycle --k-folds 3 --max-images 680 --workers 0 "
        "--curriculum-schedule '0:0.0, 1:0.2, 2:0.33'",
        analyze="--arch resnet18 --num-ssim-real 50 --num-ssim-synth 100 --num-gradcam-samples 2 "
        "--num-reference-real 1000",
    ),
    # The seed's defaults (each subcommand's own defaults) for GPU machines.
    "full": Profile(gan="", generate="", classifier="", analyze=""),
}
