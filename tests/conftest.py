"""Fixtures shared across the suite. Tests use the procedural phantom dataset, never the real data."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

# At most two intra-op threads (the machines have two cores): more only oversubscribes them.
torch.set_num_threads(max(1, min(2, torch.get_num_threads())))


@pytest.fixture(scope="session")
def phantom_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small phantom dataset in the RSNA layout (32 px, 400 patients), written once per session."""
    from shared.datasets.phantom import write_phantom_dataset

    return write_phantom_dataset(
        tmp_path_factory.mktemp("phantom"), num_patients=400, image_size=32, positive_fraction=0.4, seed=0
    )
