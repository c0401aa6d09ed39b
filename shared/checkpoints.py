"""Checkpoints that carry their own config, written atomically, read with clear errors."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import torch

from shared.errors import CheckpointError
from shared.images import atomic_write_bytes

FORMAT_VERSION = 1


def save_checkpoint(path: str | Path, kind: str, config: dict[str, Any], **payload: Any) -> None:
    """Save {'kind', 'format_version', 'config', **payload} so that no reader ever sees half a file."""
    buffer = io.BytesIO()
    torch.save({"kind": kind, "format_version": FORMAT_VERSION, "config": dict(config), **payload}, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def load_checkpoint(path: str | Path, kind: str | tuple[str, ...]) -> dict[str, Any]:
    """Load a checkpoint written by save_checkpoint and check its kind."""
    path = Path(path)
    kinds = (kind,) if isinstance(kind, str) else kind
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        # weights_only=False: our checkpoints hold RNG states and configs; only load files you trust.
        checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # torch raises many types for a damaged file
        raise CheckpointError(f"cannot read checkpoint {path}: {exc}") from exc
    if not isinstance(checkpoint, dict) or checkpoint.get("kind") not in kinds:
        found = checkpoint.get("kind") if isinstance(checkpoint, dict) else type(checkpoint).__name__
        raise CheckpointError(f"{path} is a {found!r} checkpoint, expected {' or '.join(kinds)}")
    return checkpoint
