"""Data-parallel training: torchrun's variables, gradient averaging across real gloo processes, and the GAN and
classifier trained by `torchrun --nproc-per-node 2` on the CPU (outputs written once, exact resume)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import gloo_worker
import pytest
import torch
import torch.multiprocessing as mp
from storage_server import free_port
from training_helpers import FAST, classifier_options, gan_argv, gan_options

from services.trainer import train_gan
from services.trainer.train_classifier import check_environment
from shared import distributed
from shared.checkpoints import load_checkpoint
from shared.datasets.phantom import write_phantom_dataset
from shared.distributed import Distributed
from shared.errors import CheckpointError, ConfigError

REPO = Path(__file__).resolve().parents[1]


def test_from_env_reads_torchrun_variables() -> None:
    assert distributed.from_env({}) == Distributed(rank=0, local_rank=0, world_size=1)
    ctx = distributed.from_env({"RANK": "3", "LOCAL_RANK": "1", "WORLD_SIZE": "4"})
    assert (ctx.rank, ctx.local_rank, ctx.world_size, ctx.enabled, ctx.is_main) == (3, 1, 4, True, False)
    for bad in ({"RANK": "x", "WORLD_SIZE": "2"}, {"RANK": "2", "WORLD_SIZE": "2"}, {"WORLD_SIZE": "0"}):
        with pytest.raises(ConfigError, match="torchrun"):
            distributed.from_env(bad)


def test_a_single_process_says_when_gpus_stay_idle(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    for gpus, warned in ((1, False), (4, True)):
        monkeypatch.setattr(torch.cuda, "device_count", lambda gpus=gpus: gpus)
        caplog.clear()
        ctx, device = distributed.start()
        assert not ctx.enabled and device.type == "cuda"
        assert ("4 GPUs are visible but this run uses one" in caplog.text) == warned
        assert ("--nproc-per-node gpu" in caplog.text) == warned
    caplog.clear()
    distributed.start(force_cpu=True)  # the CPU asked for: the GPUs are idle on purpose
    assert "GPUs are visible" not in caplog.text


def test_the_global_batch_is_shared_evenly() -> None:
    assert Distributed(world_size=4).per_rank_batch_size(128) == 32
    assert Distributed().per_rank_batch_size(7) == 7
    with pytest.raises(ConfigError, match="--batch-size 10 must be divisible by the 4 training processes"):
        Distributed(world_size=4).per_rank_batch_size(10)


def test_options_the_processes_cannot_share_are_refused_before_they_start(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("WORLD_SIZE", "3")
    monkeypatch.setenv("RANK", "0")
    with pytest.raises(ConfigError, match="--batch-size 8 must be divisible by the 3 training processes"):
        train_gan.check_environment(gan_options(gan_argv(tmp_path, tmp_path)))
    classifier = ["train-classifier", *FAST, "--batch-size", "21"]
    check_environment(classifier_options(classifier))  # 7 images per process
    with pytest.raises(ConfigError, match="--class-balance sampler .* with torchrun use weighted-loss"):
        check_environment(classifier_options([*classifier, "--class-balance", "sampler"]))
    with pytest.raises(ConfigError, match="--batch-size 20 must be divisible by the 3 training processes"):
        check_environment(classifier_options(["train-classifier", *FAST]))


def test_gradients_averaged_over_processes_equal_the_whole_batch_gradient() -> None:
    mp.spawn(gloo_worker.check_gradient_averaging, args=(2, free_port()), nprocs=2, join=True)


def torchrun(*argv: str) -> subprocess.CompletedProcess[str]:
    """`torchrun --standalone --nproc-per-node 2 pneumonia ARGV` on the CPU (gloo)."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    result = subprocess.run(
        [*command, "-m", "pipeline.cli", *argv], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


@pytest.mark.slow
def test_gan_trained_by_two_processes_resumes_exactly(blob_npz: Path, tmp_path: Path) -> None:
    """WGAN-GP (a gradient penalty, n_critic steps) in 2 processes: a run stopped after epoch 1 and resumed ends with
    the same weights as a straight run; rank 0 alone writes; one process cannot resume it."""
    wgan = ("--loss", "wgan-gp", "--n-critic", "2")
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    torchrun("train-gan", *gan_argv(blob_npz, straight, *wgan, "--epochs", "2"))
    torchrun("train-gan", *gan_argv(blob_npz, resumed, *wgan, "--epochs", "1"))
    torchrun("train-gan", *gan_argv(blob_npz, resumed, *wgan, "--epochs", "2", "--resume"))

    final = {
        run: load_checkpoint(run / "models/gan/generator_final.pth", "dcgan-generator") for run in (straight, resumed)
    }
    assert final[straight]["config"]["world_size"] == 2
    for name, tensor in final[straight]["state_dict"].items():
        assert torch.equal(tensor, final[resumed]["state_dict"][name]), name
    history = json.loads((straight / "results/metrics/gan_training_history.json").read_text())
    resumed_history = json.loads((resumed / "results/metrics/gan_training_history.json").read_text())
    assert [e["epoch"] for e in history["epochs"]] == [1, 2]
    for key in ("loss_d", "loss_g", "d_real", "d_fake"):
        assert [e[key] for e in history["epochs"]] == [e[key] for e in resumed_history["epochs"]], key
    assert sorted(p.name for p in (straight / "results/gan_images").iterdir()) == ["epoch_001.png", "epoch_002.png"]

    with pytest.raises(CheckpointError, match="world_size: 2 in the checkpoint, None now"):
        train_gan.train(gan_options(gan_argv(blob_npz, resumed, *wgan, "--epochs", "3", "--resume")))


@pytest.mark.slow
def test_classifier_trained_by_two_processes(tmp_path: Path) -> None:
    """Each fold in DistributedDataParallel: the results are written once, by rank 0, from every fold."""
    data = write_phantom_dataset(tmp_path / "phantom", num_patients=60, image_size=16, seed=1)
    out = tmp_path / "run"
    result = torchrun(
        "train-classifier", "--data-dir", str(data), "--dataset", "phantom", "--arch", "resnet18",
        "--weights", "none", "--unfreeze", "--image-size", "16", "--channels", "1", "--epochs", "1",
        "--batch-size", "16", "--k-folds", "2", "--workers", "0", "--cpu", "--scheduler", "onecycle",
        "--model-dir", str(out / "models"), "--results-dir", str(out / "metrics"),
        "--figures-dir", str(out / "figures"),
    )  # fmt: skip
    assert result.stdout.count("hold-out test metrics") == 1  # one summary: rank 0's
    final = json.loads((out / "metrics/baseline_final_metrics.json").read_text())
    assert [m["fold"] for m in final["holdout_per_fold"]] == [1, 2]
    history = json.loads((out / "metrics/baseline_training_history.json").read_text())
    for fold in history["folds"]:
        (entry,) = fold["epochs"]
        assert 0 < entry["train_acc"] <= 1 and entry["val_auroc"] is not None
    state = load_checkpoint(out / "models/baseline_resnet18_training_state.pth", "classifier-training-state")
    assert state["config"]["world_size"] == 2
    assert (out / "models/baseline_resnet18.pth").is_file()
