"""Writing matplotlib figures: PNG, written atomically, no global pyplot state (safe in threads and services)."""

from __future__ import annotations

import io
from pathlib import Path

from matplotlib.figure import Figure

from shared.images import atomic_write_bytes


def save_figure(fig: Figure, path: str | Path, dpi: int = 110) -> None:
    """Render `fig` as a PNG at `path`; readers see the old file or the whole new one."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
    atomic_write_bytes(path, buffer.getvalue())
