"""Checkpoints are read with weights_only=True: what our training writes loads, and a pickle that would run code is
refused before any of it runs (whoever can write to the models bucket must not run code in the services)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from shared.checkpoints import load_checkpoint, save_checkpoint
from shared.errors import CheckpointError
from shared.models.classifier import build_classifier, load_classifier
from shared.runtime import rng_state


class PlantedPayload:
    """Unpickling this runs a command, as a hostile checkpoint would."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (os.system, (f"touch {self.marker}",))


def test_training_state_with_numpy_rng_states_and_metrics_loads(tmp_path: Path) -> None:
    path = tmp_path / "state.pth"
    state = {
        "rng_state": rng_state(),  # random, numpy (a uint32 array) and torch generators
        "synthetic_rng": np.random.default_rng(3).bit_generator.state,
        "history": [{"val_auroc": np.float64(0.9), "n": np.int64(3), "ok": np.bool_(True)}],
    }
    save_checkpoint(path, "training-state", {"epochs": 2}, **state)
    loaded = load_checkpoint(path, "training-state")
    assert np.array_equal(loaded["rng_state"]["numpy"][1], state["rng_state"]["numpy"][1])
    assert loaded["synthetic_rng"] == state["synthetic_rng"]
    assert loaded["history"][0]["val_auroc"] == 0.9


@pytest.mark.parametrize("where", ["payload", "state_dict"])
def test_a_planted_pickle_is_refused_without_running(tmp_path: Path, where: str) -> None:
    marker = tmp_path / "ran"
    path = tmp_path / "classifier.pth"
    state_dict = build_classifier("resnet18", 2, 1, 16, "none").state_dict()
    if where == "state_dict":
        state_dict["fc.bias"] = PlantedPayload(marker)  # type: ignore[assignment]
    checkpoint = {"kind": "classifier", "format_version": 1, "config": {}, "state_dict": state_dict}
    if where == "payload":
        checkpoint["extra"] = PlantedPayload(marker)
    torch.save(checkpoint, path)
    with pytest.raises(CheckpointError, match="refusing .*posix.system, which no checkpoint holds; nothing of it ran"):
        load_classifier(path)
    with pytest.raises(CheckpointError, match="nothing of it ran"):
        build_classifier("resnet18", 2, 1, 16, weights=str(path))  # --weights PATH reads it the same way
    assert not marker.exists()
