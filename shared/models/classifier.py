"""The pneumonia classifier: a torchvision ResNet with a 2-class head, its preprocessing and its checkpoint.

Small images (<= 64 px, e.g. PneumoniaMNIST's 28 px) get the stem MedMNIST's ResNets use: a 3x3 stride-1 conv1 and
no max-pool, so a 28 px image still has 28 x 28 feature maps after the stem instead of 7 x 7. With `stem_pool` the
small stem keeps ResNet's 3x3 stride-2 max-pool (14 x 14 maps at 28 px): about 2.5x faster to train on a CPU
(bench/classifier_training_speed.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torchvision
from torch import nn
from torchvision import transforms

from shared.checkpoints import load_checkpoint, safe_load, save_checkpoint
from shared.datasets.base import CLASS_NAMES
from shared.errors import CheckpointError, ConfigError
from shared.transforms import GaussianNoise, RandomGamma

ARCHS = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152")
SMALL_INPUT_MAX_SIZE = 64
# ImageNet statistics; one channel uses their average (a grey image is R = G = B).
IMAGENET_MEAN, IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
GRAY_MEAN, GRAY_STD = [0.449], [0.226]
AUGMENTATIONS = ("light", "strong")  # classifier_transform(train=True)


def imagenet_weights_path(arch: str) -> Path:
    """Where torchvision's ImageNet weights for `arch` lie in the local torch hub cache (IMAGENET1K_V1, as the seed's
    `pretrained=True`)."""
    url = torchvision.models.get_model_weights(arch).IMAGENET1K_V1.url
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(url).name


def _load_state_dict_file(path: Path) -> dict[str, torch.Tensor]:
    """A plain state dict, or the `state_dict` of one of our classifier checkpoints."""
    if not path.is_file():
        raise ConfigError(f"--weights {path}: file not found (use 'none', 'imagenet' or a checkpoint path)")
    loaded = safe_load(path)
    if isinstance(loaded, dict) and "kind" in loaded:
        if loaded["kind"] != "classifier":
            raise CheckpointError(f"{path} is a {loaded['kind']!r} checkpoint, expected a classifier")
        return loaded["state_dict"]
    if not isinstance(loaded, dict) or not all(isinstance(v, torch.Tensor) for v in loaded.values()):
        raise CheckpointError(f"{path} holds neither a state dict nor a classifier checkpoint")
    return loaded


def _load_weights(model: nn.Module, state_dict: dict[str, torch.Tensor], source: str) -> None:
    try:
        model.load_state_dict(state_dict)
    except RuntimeError as exc:
        raise CheckpointError(f"weights from {source} do not fit this model ({exc})") from exc


def _stem_conv(in_channels: int, small_stem: bool, pretrained: torch.Tensor | None) -> nn.Conv2d:
    """conv1: ImageNet's 7x7 stride 2 (in_channels x S x S -> 64 x S/2 x S/2), or MedMNIST's 3x3 stride 1 for small
    images (-> 64 x S x S). Pretrained 7x7 kernels are kept; for one channel they are summed over RGB, since a grey
    image is R = G = B."""
    if small_stem:
        conv = nn.Conv2d(in_channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
    else:
        conv = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
    if pretrained is not None and not small_stem:
        conv.weight.data.copy_(pretrained if in_channels == 3 else pretrained.sum(dim=1, keepdim=True))
    else:  # torchvision's ResNet initialisation
        nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
    return conv


def build_classifier(
    arch: str = "resnet50",
    num_classes: int = 2,
    in_channels: int = 3,
    image_size: int = 224,
    weights: str = "none",
    freeze_backbone: bool = False,
    stem_pool: bool = False,
) -> nn.Module:
    """A ResNet for `in_channels` x `image_size` x `image_size` inputs with a `num_classes` head.

    weights: "none" (random init), "imagenet" (torchvision's, from the local torch hub cache only; never downloaded)
    or the path of a state dict / classifier checkpoint for exactly this architecture.
    freeze_backbone: only `fc` trains; use `set_train_mode` so the frozen BatchNorm layers stay in eval mode.
    stem_pool: the small-input stem keeps the max-pool (ignored above SMALL_INPUT_MAX_SIZE, where it always has it).
    """
    if arch not in ARCHS:
        raise ConfigError(f"--arch {arch}: unknown architecture; choose one of {', '.join(ARCHS)}")
    if in_channels not in (1, 3):
        raise ConfigError(f"--channels {in_channels}: must be 1 or 3")
    small_stem = image_size <= SMALL_INPUT_MAX_SIZE
    if freeze_backbone and weights == "none":
        raise ConfigError(
            "a frozen randomly initialised backbone cannot learn: pass --unfreeze (or pretrained --weights)"
        )
    if freeze_backbone and weights == "imagenet" and small_stem:
        raise ConfigError(
            f"--image-size {image_size} replaces the pretrained 7x7 stem with a new 3x3 one, which cannot stay frozen: "
            "pass --unfreeze"
        )

    pretrained_conv1 = None
    if weights == "imagenet":
        path = imagenet_weights_path(arch)
        if not path.is_file():
            raise ConfigError(
                f"ImageNet weights for {arch} are not in the local torch hub cache ({path}) and are never downloaded "
                "here: copy the file there, or train from scratch with --weights none --unfreeze"
            )
        model = torchvision.models.get_model(arch, weights=None)  # 1000 classes, to take the ImageNet state dict
        _load_weights(model, _load_state_dict_file(path), str(path))
        pretrained_conv1 = model.conv1.weight.detach()
        model.fc = nn.Linear(model.fc.in_features, num_classes)
    else:
        model = torchvision.models.get_model(arch, weights=None, num_classes=num_classes)
    model.conv1 = _stem_conv(in_channels, small_stem, pretrained_conv1)
    if small_stem and not stem_pool:
        model.maxpool = nn.Identity()  # else torchvision's 3x3 stride-2 max-pool: 64 x S/2 x S/2

    if weights not in ("none", "imagenet"):
        _load_weights(model, _load_state_dict_file(Path(weights)), weights)

    if freeze_backbone:
        for name, param in model.named_parameters():
            param.requires_grad = name.startswith("fc.")
    return model


def backbone_frozen(model: nn.Module) -> bool:
    """True when only the head (`fc`) has trainable parameters."""
    return not any(p.requires_grad for name, p in model.named_parameters() if not name.startswith("fc."))


def set_train_mode(model: nn.Module) -> None:
    """model.train(), except that a frozen backbone's BatchNorm layers keep their running statistics (eval mode)."""
    model.train()
    if backbone_frozen(model):
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.eval()


def classifier_config(
    arch: str,
    in_channels: int,
    image_size: int,
    strategy: str,
    weights: str,
    num_classes: int = 2,
    stem_pool: bool = False,
    augmentation: str = "light",
) -> dict[str, Any]:
    """Everything needed to rebuild the model and its preprocessing, and the augmentation it trained with; saved in
    every classifier checkpoint."""
    mean, std = (IMAGENET_MEAN, IMAGENET_STD) if in_channels == 3 else (GRAY_MEAN, GRAY_STD)
    return {
        "arch": arch,
        "num_classes": num_classes,
        "class_names": [CLASS_NAMES[i] for i in range(num_classes)],
        "in_channels": in_channels,
        "image_size": image_size,
        "mean": mean,
        "std": std,
        "small_input_stem": image_size <= SMALL_INPUT_MAX_SIZE,
        "stem_pool": stem_pool,
        "augmentation": augmentation,
        "strategy": strategy,
        "weights": weights,
    }


def classifier_transform(config: dict[str, Any], train: bool) -> transforms.Compose:
    """PIL grayscale image -> normalised tensor in_channels x image_size x image_size; `train` adds the config's
    augmentation (AUGMENTATIONS): "light", small rotations, shifts and zooms, as an X-ray's positioning varies;
    "strong", the same rotations and shifts, random crops of 75-100% of the image, and acquisition changes: brightness
    and contrast x0.8-1.2, gamma 0.8-1.25 (half the images) and Gaussian noise of sigma up to 0.04 (half the images;
    intensities in [0, 1]). Strong is milder than MedMNIST-C's severity 3 but of the same families as 7 of its 13
    corruptions, so the shifted estimate is less independent of training for those (bench/classifier_recipe.py)."""
    size = config["image_size"]
    augmentation = config.get("augmentation", "light") if train else None
    steps: list[Any] = [transforms.Resize((size, size))]
    if augmentation == "light":
        steps.append(transforms.RandomAffine(degrees=10, translate=(0.05, 0.05), scale=(0.9, 1.1)))
    elif augmentation == "strong":
        steps += [
            transforms.RandomAffine(degrees=10, translate=(0.05, 0.05)),
            transforms.RandomResizedCrop(size, scale=(0.75, 1.0), ratio=(0.9, 1.1)),
            transforms.ColorJitter(brightness=0.2, contrast=0.2),
            transforms.RandomApply([RandomGamma(0.8, 1.25)], p=0.5),
        ]
    elif augmentation is not None:
        raise ConfigError(f"augmentation {augmentation!r}: choose one of {', '.join(AUGMENTATIONS)}")
    if config["in_channels"] == 3:
        steps.append(transforms.Grayscale(num_output_channels=3))
    steps.append(transforms.ToTensor())
    if augmentation == "strong":
        steps.append(transforms.RandomApply([GaussianNoise(0.04)], p=0.5))
    steps.append(transforms.Normalize(config["mean"], config["std"]))
    return transforms.Compose(steps)


def save_classifier(path: str | Path, model: nn.Module, config: dict[str, Any]) -> None:
    """Atomically save a classifier checkpoint: kind "classifier", `config`, `state_dict` (on the CPU)."""
    state_dict = {key: value.detach().cpu() for key, value in model.state_dict().items()}
    save_checkpoint(path, "classifier", config, state_dict=state_dict)


def update_classifier_config(path: str | Path, updates: dict[str, Any]) -> None:
    """Atomically rewrite a classifier checkpoint with `updates` merged into its config, its weights unchanged."""
    checkpoint = load_checkpoint(path, "classifier")
    save_checkpoint(path, "classifier", {**checkpoint["config"], **updates}, state_dict=checkpoint["state_dict"])


def model_from_config(config: dict[str, Any]) -> nn.Module:
    """An untrained model shaped as `config` says: one ResNet, or a fold-ensemble of them (shared.models.ensemble)."""
    from shared.models.ensemble import ENSEMBLE_KEY, FoldEnsemble  # it builds on this module

    def resnet() -> nn.Module:
        return build_classifier(
            config["arch"],
            config["num_classes"],
            config["in_channels"],
            config["image_size"],
            weights="none",
            stem_pool=config.get("stem_pool", False),  # checkpoints from before the option had none
        )

    if config.get(ENSEMBLE_KEY):
        temperatures = config[ENSEMBLE_KEY]["temperatures"]
        return FoldEnsemble([resnet() for _ in temperatures], temperatures)
    return resnet()


def load_classifier(path: str | Path, device: torch.device | str = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """(model in eval mode on `device`, config) from a checkpoint written by `save_classifier`: one ResNet or a
    fold-ensemble."""
    checkpoint = load_checkpoint(path, "classifier")
    config = checkpoint["config"]
    try:
        model = model_from_config(config)
    except (KeyError, TypeError, ConfigError) as exc:
        raise CheckpointError(f"{path}: classifier config is incomplete or invalid ({exc})") from exc
    _load_weights(model, checkpoint["state_dict"], str(path))
    return model.to(device).eval(), config


def penultimate_features(model: nn.Module, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits, features): one forward pass of a torchvision ResNet, features = the input of its `fc` layer."""
    captured: list[torch.Tensor] = []
    hook = model.fc.register_forward_hook(lambda module, inputs, output: captured.append(inputs[0]))
    try:
        logits = model(batch)
    finally:
        hook.remove()
    return logits, captured[0]
