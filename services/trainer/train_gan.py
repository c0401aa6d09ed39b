"""Train a DCGAN (or conditional DCGAN, or WGAN-GP) on the development images of a chest X-ray dataset.

The hold-out test set is carved off first and never seen. An unconditional GAN learns from pneumonia images only
(its images are labelled pneumonia); --conditional trains one generator for both classes. Every epoch writes a
resumable checkpoint, a sample grid from a fixed latent batch and the loss history.

Under torchrun (`torchrun --standalone --nproc-per-node gpu pneumonia train-gan ...`) each process trains on its
shard of every epoch with --batch-size / processes images per step, and both networks' gradients are averaged over
the processes before every update; rank 0 writes every output.
"""

from __future__ import annotations

import argparse
import logging
import math
import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler
from torchvision.utils import make_grid

from services.trainer.hooks import Progress, StopCheck, stop_if_asked
from shared import layout
from shared.checkpoints import load_checkpoint, save_checkpoint
from shared.configs import GanTrainingConfig
from shared.datasets import PNEUMONIA, LabelledImages, TorchImageDataset, load_dataset
from shared.distributed import Distributed, from_env
from shared.distributed import start as start_distributed
from shared.distributed import stop as stop_distributed
from shared.diversity import PairwiseMsSsim, collapse_suspected, mean_pairwise_ms_ssim
from shared.errors import CheckpointError, ConfigError, DatasetError
from shared.figures import save_figure
from shared.images import atomic_write_json, save_png
from shared.models.dcgan import Discriminator, Generator, for_inference
from shared.runtime import seed_everything, set_rng_state
from shared.splits import develop_and_holdout
from shared.transforms import gan_transform

log = logging.getLogger(__name__)

REAL_TARGET = 0.9  # one-sided label smoothing for the BCE discriminator
TRAINING_STATE = "gan-training-state"
RESUME_MAY_CHANGE = {"epochs"}  # config keys a resumed run may change
DIVERSITY_PAIRS = 200  # random distinct pairs of the fixed-latent samples per epoch


def add_arguments(parser: argparse.ArgumentParser) -> None:
    GanTrainingConfig.add_arguments(parser)


def check_environment(options: GanTrainingConfig) -> None:
    """Refuse under torchrun, before the processes wait for each other, a batch the processes cannot share."""
    from_env().per_rank_batch_size(options.batch_size)


def training_config(options: GanTrainingConfig) -> dict[str, Any]:
    """Everything that defines the trained networks; stored in every checkpoint and in the history."""
    train_on = options.effective_train_on
    config: dict[str, Any] = {
        "dataset": options.dataset,
        "data_dir": str(Path(options.data_dir).resolve()),
        "image_size": options.image_size,
        "num_channels": options.num_channels,
        "latent_dim": options.latent_dim,
        "feature_maps_g": options.feature_maps_g,
        "feature_maps_d": options.feature_maps_d,
        "conditional": options.conditional,
        "num_classes": 2 if options.conditional else 0,
        "train_on": train_on,
        # what an unconditional generator's images are: pneumonia, or nothing if it learnt from both classes
        "label": PNEUMONIA if not options.conditional and train_on == "positive" else None,
        "max_images": options.max_images,
        "loss": options.loss,
        "lr": options.lr,
        "beta1": options.beta1,
        "batch_size": options.batch_size,
        "seed": options.seed,
        "epochs": options.epochs,
    }
    if options.loss == "wgan-gp":
        config.update(gp_weight=options.gp_weight, n_critic=options.n_critic)
    return config


def stratified_subset(labels: np.ndarray, n: int, seed: int) -> np.ndarray:
    """Sorted indices of `n` entries drawn at random with the class proportions of `labels` kept."""
    if n >= len(labels):
        return np.arange(len(labels))
    rng = np.random.default_rng(seed)
    classes, counts = np.unique(labels, return_counts=True)
    exact = counts * n / len(labels)
    quotas = np.floor(exact).astype(np.int64)
    # hand the places left over to the classes with the largest remainders
    quotas[np.argsort(quotas - exact, kind="stable")[: n - quotas.sum()]] += 1
    chosen = [rng.choice(np.flatnonzero(labels == c), q, replace=False) for c, q in zip(classes, quotas, strict=True)]
    return np.sort(np.concatenate(chosen))


def training_images(config: dict[str, Any]) -> LabelledImages:
    """The development images the GAN learns from (never the hold-out test set)."""
    develop, _holdout = develop_and_holdout(load_dataset(config["dataset"], config["data_dir"]))
    if config["train_on"] == "positive":
        develop = develop.subset(np.flatnonzero(develop.labels == PNEUMONIA))
    if config["max_images"] is not None:
        develop = develop.subset(stratified_subset(develop.labels, config["max_images"], config["seed"]))
    if len(develop) == 0:
        raise DatasetError(f"no {config['train_on']} development images in {config['data_dir']} to train a GAN on")
    log.info("training the GAN on %d development images %s", len(develop), develop.class_counts())
    return develop


def build_models(config: dict[str, Any], device: torch.device) -> tuple[Generator, Discriminator]:
    generator = Generator.from_config(config)
    discriminator = Discriminator(
        feature_maps=config["feature_maps_d"],
        channels=config["num_channels"],
        image_size=config["image_size"],
        num_classes=config["num_classes"],
        norm="instance" if config["loss"] == "wgan-gp" else "batch",  # no batch norm under a gradient penalty
    )
    return generator.to(device), discriminator.to(device)


def seed_worker(worker_id: int) -> None:
    """Seed numpy and random in a DataLoader worker from the per-worker torch seed the loader derived."""
    worker_seed = torch.initial_seed() % 2**32
    np.random.seed(worker_seed)
    random.seed(worker_seed)


def gradient_penalty(
    discriminator: nn.Module, real: torch.Tensor, fake: torch.Tensor, labels: torch.Tensor | None
) -> torch.Tensor:
    """Mean (||grad_x D(x)|| - 1)^2 at random points between real and fake images."""
    alpha = torch.rand(real.size(0), 1, 1, 1, device=real.device)
    mixed = (alpha * real + (1 - alpha) * fake).requires_grad_(True)
    (grads,) = torch.autograd.grad(discriminator(mixed, labels).sum(), mixed, create_graph=True)
    return ((grads.flatten(1).norm(2, dim=1) - 1) ** 2).mean()


def bce_step(
    generator: Generator,
    discriminator: Discriminator,
    opt_g: torch.optim.Optimizer,
    opt_d: torch.optim.Optimizer,
    real: torch.Tensor,
    labels: torch.Tensor | None,
    ctx: Distributed,
) -> dict[str, float]:
    """The seed's DCGAN step: one discriminator update, then one generator update on the same fakes."""
    # (1) Update D: maximize log(D(x)) + log(1 - D(G(z))), real targets smoothed to 0.9
    discriminator.zero_grad()
    real_logits = discriminator(real, labels)
    loss_real = F.binary_cross_entropy_with_logits(real_logits, torch.full_like(real_logits, REAL_TARGET))
    noise = torch.randn(real.size(0), generator.latent_dim, device=real.device)
    fake = generator(noise, labels)
    fake_logits = discriminator(fake.detach(), labels)
    loss_fake = F.binary_cross_entropy_with_logits(fake_logits, torch.zeros_like(fake_logits))
    loss_d = loss_real + loss_fake
    loss_d.backward()
    ctx.average_gradients(discriminator)
    opt_d.step()

    # (2) Update G: maximize log(D(G(z)))
    generator.zero_grad()
    gen_logits = discriminator(fake, labels)
    loss_g = F.binary_cross_entropy_with_logits(gen_logits, torch.ones_like(gen_logits))
    loss_g.backward()
    ctx.average_gradients(generator)
    opt_g.step()
    return {
        "loss_d": loss_d.item(),
        "loss_g": loss_g.item(),
        "d_real": torch.sigmoid(real_logits).mean().item(),
        "d_fake": torch.sigmoid(fake_logits).mean().item(),
    }


def wgan_gp_step(
    generator: Generator,
    critic: Discriminator,
    opt_g: torch.optim.Optimizer,
    opt_d: torch.optim.Optimizer,
    real: torch.Tensor,
    labels: torch.Tensor | None,
    gp_weight: float,
    update_generator: bool,
    ctx: Distributed,
) -> dict[str, float]:
    """One critic update; a generator update too when `update_generator` (every n_critic-th step)."""
    # (1) Update the critic: minimize D(G(z)) - D(x) + gp_weight * gradient penalty
    critic.zero_grad()
    noise = torch.randn(real.size(0), generator.latent_dim, device=real.device)
    fake = generator(noise, labels).detach()
    real_scores = critic(real, labels)
    fake_scores = critic(fake, labels)
    loss_d = fake_scores.mean() - real_scores.mean() + gp_weight * gradient_penalty(critic, real, fake, labels)
    loss_d.backward()
    ctx.average_gradients(critic)
    opt_d.step()
    stats = {"loss_d": loss_d.item(), "d_real": real_scores.mean().item(), "d_fake": fake_scores.mean().item()}

    if update_generator:
        # (2) Update G: maximize D(G(z))
        generator.zero_grad()
        noise = torch.randn(real.size(0), generator.latent_dim, device=real.device)
        loss_g = -critic(generator(noise, labels), labels).mean()
        loss_g.backward()
        ctx.average_gradients(generator)
        opt_g.step()
        stats["loss_g"] = loss_g.item()
    return stats


def train_one_epoch(
    generator: Generator,
    discriminator: Discriminator,
    opt_g: torch.optim.Optimizer,
    opt_d: torch.optim.Optimizer,
    loader: DataLoader,
    config: dict[str, Any],
    epoch: int,
    device: torch.device,
    ctx: Distributed,
) -> dict[str, Any]:
    """One pass over the data (this rank's shard of it); returns the epoch's mean losses and discriminator outputs
    over all ranks."""
    generator.train()
    discriminator.train()
    sums = {"loss_d": 0.0, "loss_g": 0.0, "d_real": 0.0, "d_fake": 0.0}
    batches = generator_steps = 0
    start = time.perf_counter()
    for i, (real, labels) in enumerate(ctx.progress(loader, desc=f"epoch {epoch}/{config['epochs']}", leave=False)):
        real = real.to(device, non_blocking=True)
        labels = labels.to(device) if config["conditional"] else None
        if config["loss"] == "bce":
            stats = bce_step(generator, discriminator, opt_g, opt_d, real, labels, ctx)
        else:
            step = (epoch - 1) * len(loader) + i  # counted across epochs, so small datasets still train G
            update_generator = step % config["n_critic"] == config["n_critic"] - 1
            stats = wgan_gp_step(
                generator, discriminator, opt_g, opt_d, real, labels, config["gp_weight"], update_generator, ctx
            )
        for key, value in stats.items():
            sums[key] += value
        batches += 1
        generator_steps += "loss_g" in stats
    seconds = time.perf_counter() - start
    names = list(sums)
    *totals, batches, generator_steps = ctx.sum([*sums.values(), batches, generator_steps], device)
    sums = dict(zip(names, totals, strict=True))
    return {
        "epoch": epoch,
        "loss_d": sums["loss_d"] / batches,
        "loss_g": sums["loss_g"] / generator_steps if generator_steps else None,
        "d_real": sums["d_real"] / batches,
        "d_fake": sums["d_fake"] / batches,
        "seconds": seconds,
    }


def fixed_latents(config: dict[str, Any], count: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The sample grid's latent batch, the same every epoch and after a resume; conditional: half each class."""
    noise = torch.randn(count, config["latent_dim"], generator=torch.Generator().manual_seed(config["seed"]))
    if not config["conditional"]:
        return noise.to(device), None
    labels = torch.arange(count) >= count // 2  # first half normal, second half pneumonia
    return noise.to(device), labels.long().to(device)


@torch.no_grad()
def save_samples(generator: Generator, noise: torch.Tensor, labels: torch.Tensor | None, path: Path, seed: int) -> None:
    """A PNG grid of G(noise), drawn as generate-synthetic will draw (eval mode, fresh batch-norm statistics)."""
    images = for_inference(generator, seed)(noise, labels)  # N x C x H x W in [-1, 1]
    grid = make_grid(images.cpu(), nrow=8, padding=2, normalize=True, value_range=(-1, 1))  # 3 x H' x W' in [0, 1]
    save_png((grid * 255).round().to(torch.uint8).permute(1, 2, 0).numpy(), path)


@torch.no_grad()
def plot_real_vs_synthetic(
    images: LabelledImages, config: dict[str, Any], generator: Generator, count: int, path: Path
) -> None:
    """Side by side: `count` training images (seeded draw) and `count` images of the final generator."""
    transform = gan_transform(config["image_size"], config["num_channels"])
    pick = np.random.default_rng(config["seed"]).choice(len(images), min(count, len(images)), replace=False)
    real = torch.stack([transform(images.load(int(i))) for i in pick])  # N x C x H x W in [-1, 1]
    noise, labels = fixed_latents(config, len(pick), next(generator.parameters()).device)
    if labels is not None:  # show each fake beside the class mix of the real panel
        labels = torch.as_tensor(images.labels[pick], device=labels.device)
    fake = generator(noise, labels).cpu()
    fig = Figure(figsize=(12, 6.4))
    for ax, batch, title in zip(fig.subplots(1, 2), (real, fake), ("real (training set)", "synthetic"), strict=True):
        grid = make_grid(batch, nrow=8, padding=2, normalize=True, value_range=(-1, 1))  # 3 x H' x W'
        ax.imshow(grid.permute(1, 2, 0).numpy())
        ax.set_title(title)
        ax.axis("off")
    save_figure(fig, path)


def diversity_sample(images: LabelledImages, config: dict[str, Any], count: int) -> np.ndarray:
    """The seeded real training images plot_real_vs_synthetic shows, as N x H x W grey values in [0, 1]."""
    transform = gan_transform(config["image_size"], config["num_channels"])
    pick = np.random.default_rng(config["seed"]).choice(len(images), min(count, len(images)), replace=False)
    real = torch.stack([transform(images.load(int(i))) for i in pick])  # N x C x H x W in [-1, 1]
    return ((real.mean(dim=1) + 1) / 2).double().numpy()


@torch.no_grad()
def synthetic_diversity(
    generator: Generator, noise: torch.Tensor, labels: torch.Tensor | None, seed: int
) -> PairwiseMsSsim:
    """Mean pairwise MS-SSIM of G(fixed latents), drawn as generate-synthetic draws."""
    images = for_inference(generator, seed)(noise, labels)  # N x C x H x W in [-1, 1]
    return mean_pairwise_ms_ssim(((images.mean(dim=1) + 1) / 2).double().cpu().numpy(), DIVERSITY_PAIRS, seed)


def plot_diversity(history: list[dict[str, Any]], path: Path) -> None:
    """Mean pairwise MS-SSIM of the fixed-latent samples per epoch (± one standard error) beside the real sample's."""
    rows = [row for row in history if row.get("ms_ssim_synthetic") is not None]
    if not rows:
        return
    epochs = [row["epoch"] for row in rows]
    mean = np.array([row["ms_ssim_synthetic"] for row in rows])
    error = np.array([row["ms_ssim_synthetic_se"] for row in rows])
    fig = Figure(figsize=(7, 4))
    ax = fig.subplots()
    ax.plot(epochs, mean, marker="o", label="synthetic (fixed latents)")
    ax.fill_between(epochs, mean - error, mean + error, alpha=0.3)
    ax.axhline(rows[-1]["ms_ssim_real"], color="black", linestyle="--", label="real (training sample)")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set(xlabel="epoch", ylabel="mean pairwise MS-SSIM", title="GAN diversity (lower = more diverse)")
    ax.legend()
    save_figure(fig, path)


def save_history(config: dict[str, Any], history: list[dict[str, Any]], path: Path) -> None:
    atomic_write_json(path, {"config": config, "epochs": history})


def plot_losses(history: list[dict[str, Any]], path: Path) -> None:
    """Discriminator and generator loss per epoch."""
    fig = Figure(figsize=(7, 4))
    ax = fig.subplots()
    epochs = [row["epoch"] for row in history]
    ax.plot(epochs, [row["loss_d"] for row in history], marker="o", label="discriminator")
    g_losses = [math.nan if row["loss_g"] is None else row["loss_g"] for row in history]  # None: no G step
    ax.plot(epochs, g_losses, marker="o", label="generator")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    ax.set_title("GAN training losses")
    ax.legend()
    save_figure(fig, path)


def check_resumable(saved: dict[str, Any], current: dict[str, Any], path: Path) -> None:
    """Raise CheckpointError if the checkpoint was trained with options that differ from the current ones."""
    differing = sorted(
        k for k in saved.keys() | current.keys() if k not in RESUME_MAY_CHANGE and saved.get(k) != current.get(k)
    )
    if differing:
        details = "; ".join(f"{k}: {saved.get(k)!r} in the checkpoint, {current.get(k)!r} now" for k in differing)
        raise CheckpointError(f"cannot resume from {path}: it was trained with other options ({details})")


def save_training_state(
    path: Path,
    config: dict[str, Any],
    generator: Generator,
    discriminator: Discriminator,
    opt_g: torch.optim.Optimizer,
    opt_d: torch.optim.Optimizer,
    loader_rng: torch.Generator,
    history: list[dict[str, Any]],
    rank_rng_states: list[dict[str, Any]],
) -> None:
    """Everything an exact resume needs, written atomically: networks, optimizers, every RNG (of every rank), the
    history."""
    save_checkpoint(
        path,
        TRAINING_STATE,
        config,
        epoch=len(history),
        generator=generator.state_dict(),
        discriminator=discriminator.state_dict(),
        optimizer_g=opt_g.state_dict(),
        optimizer_d=opt_d.state_dict(),
        history=history,
        rng_state=rank_rng_states[0],
        rank_rng_states=rank_rng_states,
        loader_rng_state=loader_rng.get_state(),
    )


def resume(
    path: Path,
    config: dict[str, Any],
    generator: Generator,
    discriminator: Discriminator,
    opt_g: torch.optim.Optimizer,
    opt_d: torch.optim.Optimizer,
    loader_rng: torch.Generator,
    rank: int = 0,
) -> list[dict[str, Any]]:
    """Restore the state save_training_state wrote (refusing other options; each rank its own RNGs); return the
    history so far."""
    state = load_checkpoint(path, TRAINING_STATE)
    check_resumable(state["config"], config, path)
    if state["epoch"] > config["epochs"]:
        raise ConfigError(f"{path} is at epoch {state['epoch']}, beyond --epochs {config['epochs']}")
    generator.load_state_dict(state["generator"])
    discriminator.load_state_dict(state["discriminator"])
    opt_g.load_state_dict(state["optimizer_g"])
    opt_d.load_state_dict(state["optimizer_d"])
    set_rng_state(state["rank_rng_states"][rank] if "rank_rng_states" in state else state["rng_state"])
    loader_rng.set_state(state["loader_rng_state"])
    log.info("resuming from %s after epoch %d", path, state["epoch"])
    return state["history"]


def train(options: GanTrainingConfig, progress: Progress | None = None, should_stop: StopCheck | None = None) -> Path:
    """Train the GAN and write every output; return the path of generator_final.pth.

    `progress`, when given, is called after every epoch's checkpoint with the epoch's history entry (1-based
    "epoch", "loss_d", "loss_g", "d_real", "d_fake", "seconds") and "epochs" (the total). `should_stop` is asked
    before every epoch; True raises TrainingStopped, leaving checkpoint_last.pth for --resume.
    """
    check_environment(options)
    ctx, device = start_distributed(options.cpu)
    config = training_config(options)
    if ctx.enabled:  # a resume must use as many processes: the per-rank batches and RNG streams depend on it
        config["world_size"] = ctx.world_size
    rank_batch_size = ctx.per_rank_batch_size(config["batch_size"])
    checkpoint_path = layout.gan_dir(options.model_dir) / layout.GAN_CHECKPOINT
    history_path = Path(options.results_dir) / layout.GAN_HISTORY

    seed_everything(config["seed"])
    images = training_images(config)
    generator, discriminator = build_models(config, device)
    ctx.broadcast_parameters(generator)
    ctx.broadcast_parameters(discriminator)
    if ctx.enabled:  # the same weights everywhere, but each rank its own noise
        seed_everything(config["seed"] + ctx.rank)
    betas = (config["beta1"], 0.9 if config["loss"] == "wgan-gp" else 0.999)
    opt_g = torch.optim.Adam(generator.parameters(), lr=config["lr"], betas=betas)
    opt_d = torch.optim.Adam(discriminator.parameters(), lr=config["lr"], betas=betas)
    loader_rng = torch.Generator().manual_seed(config["seed"])
    dataset = TorchImageDataset(images, gan_transform(config["image_size"], config["num_channels"]))
    sampler = ctx.sampler(dataset, config["seed"], epoch=0)
    loader = DataLoader(
        dataset,
        batch_size=rank_batch_size,
        shuffle=sampler is None,
        sampler=sampler,
        num_workers=options.workers,
        worker_init_fn=seed_worker,
        generator=loader_rng,
        pin_memory=device.type == "cuda",
    )
    noise, noise_labels = fixed_latents(config, options.vis_batch_size, device)
    real_diversity = None
    if options.vis_batch_size >= 2 and ctx.is_main:  # the yardstick for the per-epoch diversity of the samples
        real_diversity = mean_pairwise_ms_ssim(
            diversity_sample(images, config, options.vis_batch_size), DIVERSITY_PAIRS, config["seed"]
        )

    history: list[dict[str, Any]] = []
    start_epoch = 1
    if options.resume:
        history = resume(checkpoint_path, config, generator, discriminator, opt_g, opt_d, loader_rng, ctx.rank)
        start_epoch = len(history) + 1
    elif checkpoint_path.exists() and ctx.is_main:
        log.warning("starting afresh; %s will be overwritten (use --resume to continue it)", checkpoint_path)

    processes = f" in {ctx.world_size} processes" if ctx.enabled else ""
    log.info(
        "training %s GAN on %s%s for epochs %d..%d", config["loss"], device, processes, start_epoch, config["epochs"]
    )
    for epoch in range(start_epoch, config["epochs"] + 1):
        stop_if_asked(should_stop, f"before epoch {epoch}")
        if isinstance(loader.sampler, DistributedSampler):
            loader.sampler.set_epoch(epoch)
        stats = train_one_epoch(generator, discriminator, opt_g, opt_d, loader, config, epoch, device, ctx)
        ctx.check_in_sync(generator, device)
        ctx.check_in_sync(discriminator, device)
        if not ctx.is_main:
            ctx.rng_states()  # waits while rank 0 draws the epoch's samples
            ctx.barrier()  # while rank 0 writes the epoch's outputs
            continue
        if real_diversity is not None:
            diversity = synthetic_diversity(generator, noise, noise_labels, config["seed"])
            stats["ms_ssim_synthetic"], stats["ms_ssim_synthetic_se"] = diversity.mean, diversity.std_error
            stats["ms_ssim_real"] = real_diversity.mean
            if collapse_suspected(real_diversity, diversity):
                log.warning(
                    "epoch %d: possible mode collapse: the samples' mean pairwise MS-SSIM %.3f is well above the "
                    "real images' %.3f",
                    epoch,
                    diversity.mean,
                    real_diversity.mean,
                )
        history.append(stats)
        loss_g = "-" if stats["loss_g"] is None else f"{stats['loss_g']:.4f}"  # None: no generator step yet
        log.info(
            "epoch %d/%d: loss_D %.4f loss_G %s D(x) %.4f D(G(z)) %.4f, %.1f images/s",
            epoch,
            config["epochs"],
            stats["loss_d"],
            loss_g,
            stats["d_real"],
            stats["d_fake"],
            len(images) / stats["seconds"],
        )
        if epoch % options.sample_every == 0 or epoch == config["epochs"]:
            save_samples(
                generator, noise, noise_labels, layout.gan_samples_path(options.output_dir, epoch), config["seed"]
            )
        rank_rng_states = ctx.rng_states()
        save_training_state(
            checkpoint_path, config, generator, discriminator, opt_g, opt_d, loader_rng, history, rank_rng_states
        )
        save_history(config, history, history_path)
        if progress is not None:
            progress({**stats, "epochs": config["epochs"]})
        ctx.barrier()

    if ctx.is_main:
        write_final_outputs(options, config, images, generator, discriminator, history)
    ctx.barrier()
    return layout.generator_path(options.model_dir)


def write_final_outputs(
    options: GanTrainingConfig,
    config: dict[str, Any],
    images: LabelledImages,
    generator: Generator,
    discriminator: Discriminator,
    history: list[dict[str, Any]],
) -> None:
    """The final generator (eval-ready batch-norm statistics) and discriminator, the history and the figures."""
    gan_dir, figures_dir = layout.gan_dir(options.model_dir), Path(options.figures_dir)
    history_path = Path(options.results_dir) / layout.GAN_HISTORY
    final = for_inference(generator, config["seed"])
    save_checkpoint(gan_dir / layout.GENERATOR_FINAL, "dcgan-generator", config, state_dict=final.state_dict())
    save_checkpoint(
        gan_dir / layout.DISCRIMINATOR_FINAL, "dcgan-discriminator", config, state_dict=discriminator.state_dict()
    )
    save_history(config, history, history_path)
    plot_losses(history, figures_dir / layout.GAN_LOSS_FIGURE)
    plot_diversity(history, figures_dir / layout.GAN_DIVERSITY_FIGURE)
    plot_real_vs_synthetic(images, config, final, options.vis_batch_size, figures_dir / layout.GAN_COMPARISON_FIGURE)
    log.info(
        "history: %s  loss curve: %s  samples: %s",
        history_path,
        figures_dir / layout.GAN_LOSS_FIGURE,
        Path(options.output_dir) / layout.GAN_SAMPLES_DIR,
    )


def main(args: argparse.Namespace) -> int:
    options = GanTrainingConfig.from_args(args)
    try:
        generator_path = train(options)
    finally:
        stop_distributed()
    if not from_env().is_main:
        return 0
    print(f"generator: {generator_path}")
    history, figures = Path(options.results_dir) / layout.GAN_HISTORY, Path(options.figures_dir)
    samples = Path(options.output_dir) / layout.GAN_SAMPLES_DIR
    print(f"history: {history}  loss curve: {figures / layout.GAN_LOSS_FIGURE}  samples: {samples}")
    return 0
