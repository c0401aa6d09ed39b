"""The through-services driver's requests mean what the same profile means in-process: config -> proto fields,
or a refusal."""

from __future__ import annotations

import pytest
from pneumonia_proto.v1 import analyzer_pb2, common_pb2, generator_pb2, trainer_pb2

from pipeline.cli import build_parser
from pipeline.endpoints import ServiceEndpoints
from pipeline.experiment import main as experiment
from pipeline.plan import plan, step_config
from pipeline.profiles import PROFILES
from pipeline.through_services import request, sample_answer
from services.classifier.client import ClassifierError
from shared.errors import ConfigError
from shared.storage.config import BucketNames


def experiment_args(*argv: str):
    """--synthesize names a class: /data holds no dataset whose minority the plan could count."""
    return build_parser(["experiment"]).parse_args(
        ["experiment", "--data-dir", "/data", "--synthesize", "normal", *argv]
    )


def requests(args) -> dict[str, object]:
    """Each planned step's request, by step name."""
    messages = {
        "gan": trainer_pb2.StartGanJobRequest,
        "generate": generator_pb2.GenerateRequest,
        "classifier": trainer_pb2.StartClassifierJobRequest,
        "analyze": analyzer_pb2.AnalyzeRequest,
    }
    return {step.name: request(step.config, messages[step.step]()) for step in plan(args)}


@pytest.mark.parametrize("profile", sorted(PROFILES))
def test_every_profile_step_becomes_a_request(profile: str) -> None:
    sent = requests(experiment_args("--profile", profile, "--seed", "7"))
    gan, analyze = sent["train-gan"], sent["analyze-results"]
    classifier = sent["train-classifier (curriculum)"]
    assert gan.seed == classifier.seed == analyze.seed == sent["generate-synthetic"].seed == 7
    assert gan.epochs > 0 and gan.batch_size > 0 and gan.image_size >= 16  # config defaults fill unset options
    assert classifier.k_folds > 0 and classifier.arch.startswith("resnet")
    assert (
        classifier.use_synthetic and classifier.use_curriculum and not sent["train-classifier (baseline)"].use_synthetic
    )


def test_quick_profile_values_reach_the_request_fields() -> None:
    sent = requests(experiment_args("--profile", "quick", "--cpu"))
    gan = sent["train-gan"]
    assert (gan.image_size, gan.num_channels, gan.feature_maps_g, gan.epochs, gan.batch_size) == (32, 1, 32, 8, 64)
    assert gan.loss == trainer_pb2.GAN_LOSS_BCE and gan.cpu
    assert not gan.HasField("max_images")
    classifier = sent["train-classifier (curriculum)"]
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
    generate = sent["generate-synthetic"]
    assert (generate.count, generate.batch_size) == (300, 100)
    assert sent["analyze-results"].num_reference_real == 1000


def test_user_overrides_win_over_the_profile() -> None:
    args = experiment_args("--profile", "quick", "--gan-args", "--epochs 2 --loss wgan-gp --max-images 50")
    gan = request(step_config(args, "gan"), trainer_pb2.StartGanJobRequest())
    assert gan.epochs == 2 and gan.loss == trainer_pb2.GAN_LOSS_WGAN_GP and gan.max_images == 50
    assert gan.image_size == 32  # the rest of the profile stays


def test_the_experiment_seed_wins_over_a_step_flag() -> None:
    args = experiment_args("--seed", "3", "--analyze-args", "--seed 9 --skip-gradcam")
    analyze = request(step_config(args, "analyze"), analyzer_pb2.AnalyzeRequest())
    assert analyze.seed == 3 and analyze.skip_gradcam


def test_a_local_option_no_request_carries_is_refused() -> None:
    args = experiment_args("--classifier-args=--resume")
    with pytest.raises(ConfigError, match="--resume cannot be sent"):
        request(step_config(args, "classifier"), trainer_pb2.StartClassifierJobRequest())
    args = experiment_args("--generate-args=--latent-dim 50")
    with pytest.raises(ConfigError, match="--latent-dim cannot be sent"):
        request(step_config(args, "generate", model_path="-"), generator_pb2.GenerateRequest())


def test_what_the_services_decide_for_themselves_is_accepted() -> None:
    args = experiment_args("--cpu", "--generate-args", "--label normal", "--classifier-args", "--workers 2")
    generate = request(step_config(args, "generate", model_path="-"), generator_pb2.GenerateRequest())
    assert generate.label == common_pb2.LABEL_NORMAL
    assert request(step_config(args, "classifier"), trainer_pb2.StartClassifierJobRequest()).cpu


def test_an_unknown_or_invalid_step_flag_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="--no-such-flag"):
        plan(experiment_args("--gan-args", "--no-such-flag 1"))
    with pytest.raises(ConfigError, match="--epochs"):
        plan(experiment_args("--classifier-args", "--epochs 0"))


def test_a_weights_file_is_refused_through_the_services() -> None:
    args = experiment_args("--classifier-args", "--weights /tmp/some.pth")
    with pytest.raises(ConfigError, match="--weights PATH"):
        request(step_config(args, "classifier"), trainer_pb2.StartClassifierJobRequest())


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


def test_a_sample_the_gate_refuses_is_shown_as_refused_and_other_errors_stop_the_run() -> None:
    def answers(label: str) -> dict:
        return {"label": label, "pneumonia_probability": 0.25, "model_version": "abc123"}

    def refuses(model: str, png: bytes) -> dict:
        raise ClassifierError(400, "implausible input [out_of_distribution]: image layout is unlike ... (1.31 > 0.92)")

    def fails(model: str, png: bytes) -> dict:
        raise ClassifierError(503, "Prediction failed")

    assert sample_answer(lambda model, png: answers("normal"), b"png") == ("normal (p=0.250)", "abc123")
    assert sample_answer(refuses, b"png") == ("refused (out_of_distribution)", None)
    with pytest.raises(ClassifierError, match="503"):
        sample_answer(fails, b"png")
