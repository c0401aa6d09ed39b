"""The plain classifier training and evaluation passes, shared by train-classifier and the analyzer's TSTR."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm import tqdm

from shared.calibration import (
    pneumonia_probability,
)
from shared.distributed import ONE_PROCESS, Distributed
from shared.metrics import binary_metrics
from shared.models.classifier import (
    set_train_mode,
)


def train_one_epoch(
    model: nn.Module,
    loader: DataLoader,
    criterion: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None,
    device: torch.device,
    desc: str,
    ctx: Distributed = ONE_PROCESS,
) -> tuple[float, float]:
    """One pass over `loader` (this rank's shard); (mean training loss, training accuracy) over all ranks."""
    set_train_mode(model.module if isinstance(model, DistributedDataParallel) else model)
    total_loss, correct, seen = 0.0, 0, 0
    for images, labels in ctx.progress(loader, desc=desc, leave=False):
        images, labels = images.to(device), labels.to(device)  # batch x C x S x S, batch
        logits = model(images)  # batch x 2
        loss = criterion(logits, labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        total_loss += loss.item() * len(labels)
        correct += (logits.argmax(dim=1) == labels).sum().item()
        seen += len(labels)
    total_loss, correct, seen = ctx.sum([total_loss, correct, seen], device)
    return total_loss / seen, correct / seen


@torch.no_grad()
def predict_logits(model: nn.Module, loader: DataLoader, device: torch.device) -> tuple[np.ndarray, np.ndarray, float]:
    """(labels, logits N x 2, mean unweighted cross-entropy) over `loader`, in eval mode."""
    model.eval()
    labels, all_logits, total_loss = [], [], 0.0
    for images, targets in tqdm(loader, desc="evaluate", leave=False):
        logits = model(images.to(device))  # batch x 2
        total_loss += nn.functional.cross_entropy(logits, targets.to(device), reduction="sum").item()
        all_logits.append(logits.detach().double().cpu().numpy())
        labels.append(targets.numpy())
    y_true = np.concatenate(labels)
    return y_true, np.concatenate(all_logits), total_loss / len(y_true)


def predict(model: nn.Module, loader: DataLoader, device: torch.device) -> tuple[np.ndarray, np.ndarray, float]:
    """(labels, P(pneumonia) by plain softmax, mean unweighted cross-entropy) over `loader`, in eval mode."""
    y_true, logits, loss = predict_logits(model, loader, device)
    return y_true, pneumonia_probability(logits), loss


def evaluate(model: nn.Module, loader: DataLoader, device: torch.device) -> tuple[float, dict[str, Any]]:
    """(mean unweighted cross-entropy, binary_metrics) of `model` on `loader`."""
    y_true, p_pneumonia, loss = predict(model, loader, device)
    return loss, binary_metrics(y_true, p_pneumonia)
