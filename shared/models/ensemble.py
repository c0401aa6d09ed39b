"""The fold-ensemble: the k cross-validation fold models served as one classifier, so the served model has learned from
every development image (each fold model saw (k - 1) / k of them).

    ensemble = FoldEnsemble(fold_models, temperatures)   # each fold model with its own fitted temperature
    logits = ensemble(images)                            # batch x 2: log of the mean calibrated probabilities

It has the shape of one of our ResNets, so everything that serves, explains, gates or exports a classifier takes it
unchanged: `body` (images -> features, the k members' penultimate features side by side, batch x k*D) and `fc`
(features -> logits). The head divides each member's logits by that member's temperature, takes the softmax, and
averages the k probabilities; its logits are their logarithms, so a softmax of them gives the mean probability back
and a further temperature of 1 leaves it unchanged. A checkpoint of it is a classifier checkpoint whose config has an
"ensemble" entry (ensemble_config); shared.models.classifier.load_classifier builds it from that.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

ENSEMBLE_KEY = "ensemble"
COMBINE = "mean calibrated probability"
MIN_PROBABILITY = 1e-12  # the log of an exact 0 would be -inf


class MemberFeatures(nn.Module):
    """Images -> the members' penultimate features side by side: batch x C x S x S -> batch x (k * D)."""

    def __init__(self, members: Sequence[nn.Module]) -> None:
        super().__init__()
        self.members = nn.ModuleList(members)  # ResNets whose fc is nn.Identity: x -> batch x D

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([member(x) for member in self.members], dim=1)  # batch x (k * D)


class MeanProbabilityHead(nn.Module):
    """The members' heads, each after its temperature, averaged in probability: batch x (k * D) -> batch x 2 logits
    (the log of the mean probabilities)."""

    def __init__(self, heads: Sequence[nn.Linear], temperatures: Sequence[float]) -> None:
        super().__init__()
        if len(heads) != len(temperatures) or not heads:
            raise ValueError(f"{len(heads)} heads and {len(temperatures)} temperatures: need one of each per member")
        self.heads = nn.ModuleList(heads)
        self.register_buffer("temperatures", torch.tensor([float(t) for t in temperatures]))
        self.width = heads[0].in_features

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        chunks = torch.split(features, self.width, dim=1)  # k x (batch x D)
        per_member = [
            torch.softmax(head(chunk) / self.temperatures[i], dim=1)  # batch x 2
            for i, (head, chunk) in enumerate(zip(self.heads, chunks, strict=True))
        ]
        probabilities = torch.stack(per_member).mean(dim=0)  # batch x 2
        return torch.log(probabilities.clamp_min(MIN_PROBABILITY))


class FoldEnsemble(nn.Module):
    """k fold models as one classifier: body (images -> batch x k*D features), fc (features -> batch x 2 logits)."""

    def __init__(self, members: Sequence[nn.Module], temperatures: Sequence[float]) -> None:
        super().__init__()
        heads = []
        for member in members:
            heads.append(member.fc)
            member.fc = nn.Identity()  # the member now ends at its features; its head moves into the ensemble's
        self.body = MemberFeatures(members)
        self.fc = MeanProbabilityHead(heads, temperatures)

    @property
    def members(self) -> nn.ModuleList:
        return self.body.members

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.body(x))  # batch x 2


def ensemble_config(
    member_config: dict[str, Any], folds: Sequence[int], temperatures: Sequence[float]
) -> dict[str, Any]:
    """The ensemble's checkpoint config: the members' architecture and preprocessing (`member_config`, without its
    calibration and gate, which the ensemble gets its own of) and what it is made of."""
    config = {key: value for key, value in member_config.items() if key not in ("calibration", "plausibility")}
    config[ENSEMBLE_KEY] = {
        "members": len(folds),
        "folds": [int(fold) for fold in folds],
        "temperatures": [float(t) for t in temperatures],
        "combine": COMBINE,
    }
    return config


def is_ensemble(config: dict[str, Any]) -> bool:
    return bool(config.get(ENSEMBLE_KEY))


def describe_model(config: dict[str, Any]) -> str:
    """What the served model is, in a few words, for answers and model cards."""
    arch = config.get("arch", "classifier")
    if is_ensemble(config):
        members = config[ENSEMBLE_KEY]["members"]
        return f"fold-ensemble of {members} {arch} models ({COMBINE})"
    return f"one {arch} model"
