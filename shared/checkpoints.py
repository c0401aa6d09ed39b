"""Checkpoints that carry their own config, written atomically, read with clear errors, and read safely.

Every checkpoint and weights file is read with `torch.load(weights_only=True)`: tensors, plain Python values and
the few NumPy types of the RNG states our training checkpoints keep (SAFE_GLOBALS), nothing else. A file that
names any other global (a pickle that would run code) is refused before anything of it is executed, so whoever can
write to the models bucket cannot run code in the services that read it.
"""

from __future__ import annotations

import io
import pickle
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from shared.errors import CheckpointError
from shared.images import atomic_write_bytes

FORMAT_VERSION = 1


def _numpy_multiarray(name: str) -> object:
    try:
        from numpy._core import multiarray  # NumPy 2
    except ImportError:  # NumPy 1.26
        from numpy.core import multiarray  # type: ignore[no-redef]
    return getattr(multiarray, name)


# The NumPy objects our checkpoints hold: np.random.get_state() in every training checkpoint's RNG states (a tuple
# with a uint32 array) and NumPy scalars among the recorded metrics.
SAFE_GLOBALS: list = [
    np.ndarray,
    np.dtype,
    _numpy_multiarray("_reconstruct"),
    _numpy_multiarray("scalar"),
    *(type(np.dtype(t)) for t in (np.float64, np.float32, np.int64, np.int32, np.uint32, np.bool_)),
]


def safe_load(path: str | Path) -> Any:
    """torch.load with weights_only=True and SAFE_GLOBALS allowed; CheckpointError for an unreadable file or one
    that needs anything else to be unpickled (nothing of it runs)."""
    try:
        with torch.serialization.safe_globals(SAFE_GLOBALS):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        found = re.search(r"GLOBAL (\S+)", str(exc))
        what = found.group(1) if found else "not a tensor or plain value"
        message = f"refusing {path}: it holds {what}, which no checkpoint holds; nothing of it ran"
        raise CheckpointError(message) from exc
    except Exception as exc:  # torch raises many types for a damaged file
        raise CheckpointError(f"cannot read checkpoint {path}: {exc}") from exc


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
    checkpoint = safe_load(path)
    if not isinstance(checkpoint, dict) or checkpoint.get("kind") not in kinds:
        found = checkpoint.get("kind") if isinstance(checkpoint, dict) else type(checkpoint).__name__
        raise CheckpointError(f"{path} is a {found!r} checkpoint, expected {' or '.join(kinds)}")
    return checkpoint
