"""The orchestrator's requests mean what the same profile means in-process: flags -> proto fields, or a refusal."""

from __future__ import annotations

import pytest
from pneumonia.v1 import analyzer_pb2, trainer_pb2

from pipeline.cli import build_parser
from pipeline.endpoints import ServiceEndpoints
from pipeline.experiment import main as experiment
from pipeline.profiles import PROFILES
from pipeline.through_services import profile_flags, request_from_flags
from shared.errors import ConfigError
from shared.storage.config import BucketNames


def experiment_args(*argv: str):
    return build_parser().parse_args(["experiment", "--data-dir", "/data", *argv])


@pytest.mark.parametrize("profile", sorted(PROFILES))
def test_every_profile_step_becomes_a_request(profile: str) -> None:
    args = experiment_args("--profile", profile, "--seed", "7")
    gan = request_from_flags(trainer_pb2.StartGanJobRequest(), "train-gan", profile_flags(args, "gan"))
    classifier = request_from_flags(
        trainer_pb2.StartClassifierJobRequest(), "train-classifier", profile_flags(args, "classifier")
    )
    analyze = request_from_flags(analyzer_pb2.AnalyzeRequest(), "analyze-results", profile_flags(args, "analyze"))
    assert gan.seed == classifier.seed == analyze.seed == 7
    assert gan.epochs > 0 and gan.batch_size > 0 and gan.image_size >= 16  # CLI defaults fill unset flags
    assert classifier.k_folds > 0 and classifier.arch.startswith("resnet")


def test_quick_profile_values_reach_the_request_fields() -> None:
    args = experiment_args("--profile", "quick", "--cpu")
    gan = request_from_flags(trainer_pb2.StartGanJobRequest(), "train-gan", profile_flags(args, "gan"))
    assert (gan.image_size, gan.num_channels, gan.feature_maps_g, gan.epochs, gan.batch_size) == (32, 1, 32, 8, 64)
    assert gan.loss == trainer_pb2.GAN_LOSS_BCE and gan.cpu
    assert not gan.HasField("max_images")
    classifier = request_from_flags(
        trainer_pb2.StartClassifierJobRequest(),
        "train-classifier",
        [*profile_flags(args, "classifier"), "--use-synthetic", "--use-curriculum"],
    )
    assert (classifier.arch, classifier.weights, classifier.image_size, classifier.k_folds) == (
        "resnet18",
        "none",
        28,
        3,
    )
    assert classifier.max_images == 680 and classifier.unfreeze and classifier.use_curriculum
    assert classifier.scheduler == trainer_pb2.LR_SCHEDULER_ONECYCLE
    assert classifier.curriculum_schedule == "0:0.0, 1:0.2, 2:0.33"
    assert classifier.class_balance == trainer_pb2.CLASS_BALANCE_WEIGHTED_LOSS


def test_user_overrides_win_over_the_profile() -> None:
    args = experiment_args("--profile", "quick", "--gan-args", "--epochs 2 --loss wgan-gp --max-images 50")
    gan = request_from_flags(trainer_pb2.StartGanJobRequest(), "train-gan", profile_flags(args, "gan"))
    assert gan.epochs == 2 and gan.loss == trainer_pb2.GAN_LOSS_WGAN_GP and gan.max_images == 50


def test_a_flag_the_request_cannot_carry_is_refused() -> None:
    args = experiment_args("--classifier-args=--resume")
    with pytest.raises(ConfigError, match="--resume cannot be sent"):
        request_from_flags(
            trainer_pb2.StartClassifierJobRequest(), "train-classifier", profile_flags(args, "classifier")
        )


def test_a_weights_file_is_refused_through_the_services() -> None:
    args = experiment_args("--classifier-args", "--weights /tmp/some.pth")
    with pytest.raises(ConfigError, match="--weights PATH"):
        request_from_flags(
            trainer_pb2.StartClassifierJobRequest(), "train-classifier", profile_flags(args, "classifier")
        )


def test_endpoints_come_from_the_environment() -> None:
    endpoints = ServiceEndpoints.from_env(
        {"PNEUMONIA_TRAINER_ADDRESS": "trainer:50051", "PNEUMONIA_CLASSIFIER_KEY_FILE": "/keys/key_file.json"}
    )
    assert endpoints.trainer == "trainer:50051" and str(endpoints.classifier_key_file) == "/keys/key_file.json"
    assert endpoints.generator == ServiceEndpoints().generator


def test_local_services_needs_via_services() -> None:
    with pytest.raises(ConfigError, match="--local-services needs --via-services"):
        experiment(experiment_args("--local-services"))


def test_bucket_names_come_from_the_environment_and_are_checked() -> None:
    names = BucketNames.from_env({"PNEUMONIA_RESULTS_BUCKET": "run-results", "PNEUMONIA_MODELS_BUCKET": ""})
    assert (names.results, names.models, names.datasets) == ("run-results", "models", "datasets")
    with pytest.raises(ConfigError, match="PNEUMONIA_SYNTHETIC_BUCKET"):
        BucketNames.from_env({"PNEUMONIA_SYNTHETIC_BUCKET": "Not_A_Bucket"})
