"""Training throughput: one process vs torchrun with N processes, side by side, on real images.

    .venv/bin/python bench/distributed_training.py --data-dir ../shared/data/pneumoniamnist --processes 2 [--cpu]

Runs `pneumonia train-gan` and `pneumonia train-classifier` (one fold, one split) first as one process, then under
`torchrun --standalone --nproc-per-node N` with the same global batch, and reports training images/s of each epoch
after the first (the first pays for start-up) and the ratio of the torchrun run to the single process. On GPUs each
process takes one GPU; with --cpu the processes share the CPU cores (gloo), which measures the overhead of the
data-parallel machinery rather than a speed-up. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

GAN_FLAGS = shlex.split(
    "--dataset pneumoniamnist --image-size 32 --num-channels 1 --feature-maps-g 32 --feature-maps-d 32 "
    "--batch-size 64 --workers 0 --vis-batch-size 16"
)
CLASSIFIER_FLAGS = shlex.split(
    "--dataset pneumoniamnist --arch resnet18 --weights none --unfreeze --image-size 28 --channels 1 --batch-size 32 "
    "--k-folds 1 --workers 0 --max-images 1600"
)


def run(step: str, flags: list[str], out: Path, processes: int) -> None:
    """`pneumonia STEP FLAGS` with outputs under `out`, in one process or under torchrun."""
    outputs = ["--model-dir", str(out / "models"), "--results-dir", str(out / "metrics"), "--figures-dir", str(out)]
    if step == "train-gan":
        outputs += ["--output-dir", str(out)]
    launcher = [sys.executable, "-m", "pipeline.cli"]
    if processes > 1:
        launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}"]
        launcher += ["-m", "pipeline.cli"]
    subprocess.run([*launcher, step, *flags, *outputs], check=True, stdout=subprocess.DEVNULL)


def gan_images_per_second(out: Path, num_images: int) -> list[float]:
    history = json.loads((out / "metrics/gan_training_history.json").read_text())
    return [num_images / epoch["seconds"] for epoch in history["epochs"]]


def classifier_images_per_second(out: Path) -> list[float]:
    """Training images/s per epoch; the epoch's seconds include rank 0's validation pass."""
    history = json.loads((out / "metrics/baseline_training_history.json").read_text())
    (fold,) = history["folds"]
    return [(e["n_real"] + e["n_synthetic"]) / e["seconds"] for e in fold["epochs"]]


def gan_training_images(data_dir: Path) -> int:
    from services.trainer.train_gan import training_config, training_images
    from shared.configs import GanTrainingConfig

    options = GanTrainingConfig.from_argv([*GAN_FLAGS, "--data-dir", str(data_dir)])
    return len(training_images(training_config(options)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, required=True, help="PneumoniaMNIST (pneumoniamnist.npz)")
    parser.add_argument("--processes", type=int, default=2, help="torchrun processes (one per GPU on GPUs)")
    parser.add_argument("--epochs", type=int, default=3, help="epochs per run (the first is not counted)")
    parser.add_argument("--cpu", action="store_true", help="train on the CPU (gloo) even where CUDA is available")
    args = parser.parse_args()
    data = ["--data-dir", str(args.data_dir.resolve()), "--epochs", str(args.epochs)] + (["--cpu"] if args.cpu else [])

    num_gan_images = gan_training_images(args.data_dir)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for step, flags in (("train-gan", GAN_FLAGS), ("train-classifier", CLASSIFIER_FLAGS)):
            rates = {}
            for processes in (1, args.processes):
                out = Path(tmp) / f"{step}-{processes}"
                run(step, [*flags, *data], out, processes)
                if step == "train-gan":
                    per_epoch = gan_images_per_second(out, num_gan_images)
                else:
                    per_epoch = classifier_images_per_second(out)
                rates[processes] = sum(per_epoch[1:]) / len(per_epoch[1:])
            rows.append((step, rates[1], rates[args.processes], rates[args.processes] / rates[1]))

    device = "CPU (gloo)" if args.cpu or not torch.cuda.is_available() else torch.cuda.get_device_name(0)
    machine = platform.processor() or platform.machine()
    print(f"{machine}, {os.cpu_count()} CPU cores, {device}, torch {torch.__version__}")
    print(f"\n| step | 1 process (img/s) | torchrun {args.processes} processes (img/s) | ratio |")
    print("|---|---:|---:|---:|")
    for step, single, multi, ratio in rows:
        print(f"| {step} | {single:.0f} | {multi:.0f} | {ratio:.2f} |")


if __name__ == "__main__":
    main()
