"""Data-parallel training across processes started by torchrun (one process per GPU, or per CPU slot with gloo).

Without torchrun's variables (or with WORLD_SIZE=1) everything here is a no-op and training runs as one process, so
the same command works on one device and on many: `torchrun --standalone --nproc-per-node gpu pneumonia train-gan
...` starts one process per visible GPU. Rank 0 writes every file; the other ranks train and wait.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import Dataset, DistributedSampler
from tqdm import tqdm

from shared.errors import ConfigError
from shared.runtime import rng_state, select_device

log = logging.getLogger(__name__)
T = TypeVar("T")

# Ranks wait for rank 0 while it evaluates, calibrates and writes checkpoints; give that time before giving up.
COLLECTIVE_TIMEOUT = timedelta(minutes=60)


@dataclass(frozen=True)
class Distributed:
    """This process's place in the run: rank among world_size processes, local_rank on its machine."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def per_rank_batch_size(self, batch_size: int) -> int:
        """`batch_size` (--batch-size) is the global batch; each rank takes an equal share of it."""
        if batch_size % self.world_size:
            processes = self.world_size
            raise ConfigError(f"--batch-size {batch_size} must be divisible by the {processes} training processes")
        return batch_size // self.world_size

    def sampler(self, dataset: Dataset, seed: int, epoch: int) -> DistributedSampler | None:
        """Each rank's shard of a seeded shuffle of `dataset` for `epoch` (None for one process: shuffle as usual)."""
        if not self.enabled:
            return None
        sampler = DistributedSampler(dataset, self.world_size, self.rank, shuffle=True, seed=seed)
        sampler.set_epoch(epoch)
        return sampler

    def progress(self, iterable: Iterable[T], **options: Any) -> Iterable[T]:
        """A tqdm progress bar on rank 0 only (its own defaults and TQDM_* settings kept there)."""
        return tqdm(iterable, **options) if self.is_main else iterable

    def wrap(self, model: nn.Module, device: torch.device) -> nn.Module:
        """`model` in DistributedDataParallel (gradients averaged during backward); unchanged for one process."""
        if not self.enabled:
            return model
        return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)

    def average_gradients(self, module: nn.Module) -> None:
        """Average the gradients of `module` over the ranks in one flat all-reduce.

        For training steps DistributedDataParallel cannot wrap: a GAN calls its discriminator several times per
        update and a gradient penalty differentiates twice (NVIDIA's StyleGAN2-ADA/3 training loops do the same)."""
        if not self.enabled:
            return
        grads = [p.grad for p in module.parameters() if p.grad is not None]
        flat = torch.cat([g.flatten() for g in grads])
        dist.all_reduce(flat)
        flat /= self.world_size
        for grad, part in zip(grads, flat.split([g.numel() for g in grads]), strict=True):
            grad.copy_(part.view_as(grad))

    def broadcast_parameters(self, module: nn.Module) -> None:
        """Give every rank rank 0's parameters and buffers."""
        if self.enabled:
            for tensor in list(module.parameters()) + list(module.buffers()):
                dist.broadcast(tensor.data, src=0)

    def sum(self, values: Sequence[float], device: torch.device) -> list[float]:
        """Element-wise sums of `values` over the ranks."""
        if not self.enabled:
            return list(values)
        tensor = torch.tensor(values, dtype=torch.float64, device=device)
        dist.all_reduce(tensor)
        return tensor.tolist()

    def gather(self, value: Any) -> list[Any]:
        """Every rank's `value`, in rank order, on every rank."""
        if not self.enabled:
            return [value]
        values: list[Any] = [None] * self.world_size
        dist.all_gather_object(values, value)
        return values

    def rng_states(self) -> list[dict[str, Any]]:
        """Every rank's global RNG states, in rank order (an exact resume restores each rank's own)."""
        return self.gather(rng_state())

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def check_in_sync(self, module: nn.Module, device: torch.device) -> None:
        """Raise RuntimeError unless every rank holds the same parameters (they drift if a gradient is not averaged)."""
        if not self.enabled:
            return
        with torch.no_grad():
            checksum = float(sum(p.double().sum() for p in module.parameters()))
        sums = self.gather(checksum)
        if any(s != sums[0] for s in sums):
            raise RuntimeError(f"the ranks' parameters differ (checksums {sums})")


ONE_PROCESS = Distributed()


def from_env(environ: dict[str, str] | None = None) -> Distributed:
    """The process's place from torchrun's RANK, LOCAL_RANK and WORLD_SIZE (one process when they are unset)."""
    environ = os.environ if environ is None else environ
    try:
        world_size = int(environ.get("WORLD_SIZE", "1"))
        rank = int(environ.get("RANK", "0"))
        local_rank = int(environ.get("LOCAL_RANK", str(rank)))
    except ValueError as exc:
        raise ConfigError(f"torchrun's RANK / LOCAL_RANK / WORLD_SIZE must be integers: {exc}") from exc
    if world_size < 1 or not 0 <= rank < world_size or local_rank < 0:
        raise ConfigError(
            f"inconsistent torchrun variables: RANK={rank} LOCAL_RANK={local_rank} WORLD_SIZE={world_size}"
        )
    return Distributed(rank, local_rank, world_size)


def warn_if_gpus_idle(where: str = "this run") -> None:
    """Say so when more GPUs are visible than one process uses."""
    count = torch.cuda.device_count()
    if count > 1:
        log.warning(
            "%d GPUs are visible but %s uses one; train on all of them with "
            "`torchrun --standalone --nproc-per-node gpu pneumonia train-gan|train-classifier ...`",
            count,
            where,
        )


def start(force_cpu: bool = False) -> tuple[Distributed, torch.device]:
    """Join the process group torchrun set up (NCCL on GPUs, gloo on the CPU); (this process's place, its device).

    Each rank takes GPU LOCAL_RANK; more processes than visible GPUs on a machine is an error."""
    ctx = from_env()
    device = select_device(force_cpu)
    if not ctx.enabled:
        if device.type == "cuda":
            warn_if_gpus_idle()
        return ctx, device
    if device.type == "cuda":
        if ctx.local_rank >= torch.cuda.device_count():
            raise ConfigError(
                f"LOCAL_RANK {ctx.local_rank} has no GPU: {torch.cuda.device_count()} visible; start at most that many "
                "processes per machine (torchrun --nproc-per-node gpu)"
            )
        device = torch.device("cuda", ctx.local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend, timeout=COLLECTIVE_TIMEOUT)
        log.info("rank %d of %d on %s (%s)", ctx.rank, ctx.world_size, device, backend)
    if not ctx.is_main:  # one run's log: the other ranks report only warnings and errors
        logging.getLogger().setLevel(logging.WARNING)
    return ctx, device


def stop() -> None:
    """Leave the process group (after the last collective call)."""
    if dist.is_initialized():
        dist.destroy_process_group()
