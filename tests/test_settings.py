"""The services' settings models: every field is a documented PNEUMONIA_* variable, a bad value is a ConfigError
naming it, secrets stay secret, and --help and README's tables are generated from the models."""

from __future__ import annotations

import importlib
import importlib.util
import re
from pathlib import Path

import pytest
from pydantic import SecretStr

from shared.errors import ConfigError
from shared.settings import Settings, env_fields, env_name, is_secret, settings_help
from shared.storage.config import StorageConfig

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("settings_docs", ROOT / "scripts" / "settings_docs.py")
assert _spec is not None and _spec.loader is not None
settings_docs = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(settings_docs)

MODELS = {model.__name__: model for _, _, model in settings_docs.models()}
SERVICES = {"trainer": "TrainerConfig", "generator": "GeneratorConfig", "analyzer": "AnalyzerConfig"}
SERVICES |= {"classifier": "ClassifierConfig", "web": "WebConfig"}
BAD = "Not a valid value ("  # no number, choice, bucket name, model entry or regular expression
S3 = {
    "PNEUMONIA_STORAGE_BACKEND": "s3",
    "PNEUMONIA_S3_ENDPOINT": "minio:9000",
    "PNEUMONIA_S3_ACCESS_KEY": "access-key-1234",
    "PNEUMONIA_S3_SECRET_KEY": "secret-key-5678",
}


def all_subclasses(cls: type) -> set[type]:
    return {sub for direct in cls.__subclasses__() for sub in {direct} | all_subclasses(direct)}


def constrained(model: type[Settings], name: str) -> bool:
    """Whether the field refuses some values: not free text, a path or a secret, or checked by a validator."""
    field = model.model_fields[name]
    validated = any(name in d.info.fields for d in model.__pydantic_decorators__.field_validators.values())
    free_form = field.annotation in (str, Path, str | None, Path | None, SecretStr | None) and not field.metadata
    return validated or not free_form


def test_every_settings_model_is_in_the_docs() -> None:
    for path in [*ROOT.glob("services/*/config.py"), ROOT / "shared" / "storage" / "config.py"]:
        importlib.import_module(".".join(path.relative_to(ROOT).with_suffix("").parts))
    project = {cls for cls in all_subclasses(Settings) if cls.__module__.split(".")[0] in ("services", "shared")}
    assert project == set(MODELS.values())


@pytest.mark.parametrize("model", MODELS.values(), ids=MODELS)
def test_every_field_is_a_described_pneumonia_variable(model: type[Settings]) -> None:
    variables = [env_name(field, name) for name, field in env_fields(model).items()]
    assert len(variables) == len(set(variables))
    for name, field in env_fields(model).items():
        assert field.description, f"{model.__name__}.{name} has no description"
        assert re.fullmatch(r"PNEUMONIA_[A-Z0-9_]+", env_name(field, name)), f"{model.__name__}.{name}"
        assert model.variable(name) == env_name(field, name)


@pytest.mark.parametrize("model", MODELS.values(), ids=MODELS)
def test_a_bad_value_is_a_config_error_naming_its_variable(model: type[Settings]) -> None:
    checked = 0
    for name in env_fields(model):
        variable = model.variable(name)
        if constrained(model, name):
            with pytest.raises(ConfigError, match=f"^{variable}[: ]"):
                model.from_env({variable: BAD})
            checked += 1
        else:
            assert isinstance(model.from_env({variable: BAD}), model)
    assert checked


def test_a_bad_value_given_to_the_constructor_is_a_config_error_too() -> None:
    with pytest.raises(ConfigError, match="PNEUMONIA_TRAINER_DEVICE must be one of auto, cpu, cuda, got 'tpu'"):
        MODELS["TrainerConfig"](device="tpu")
    with pytest.raises(ConfigError, match="PNEUMONIA_CLASSIFIER_INFERENCE_PORT must be an integer between 0 and 65535"):
        MODELS["ClassifierConfig"](inference_port=70000)


def test_the_constructor_ignores_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PNEUMONIA_GENERATOR_MAX_IMAGES", "7")
    assert MODELS["GeneratorConfig"]().max_images == 10000
    assert MODELS["GeneratorConfig"].from_env().max_images == 7


def test_empty_variables_count_as_unset() -> None:
    assert MODELS["AnalyzerConfig"].from_env({"PNEUMONIA_ANALYZER_GRPC_PORT": "", "PNEUMONIA_ANALYZER_HOST": None}) == (
        MODELS["AnalyzerConfig"]()
    )


def test_secrets_never_show_in_repr_or_errors() -> None:
    secrets = [name for model in MODELS.values() for name, field in env_fields(model).items() if is_secret(field)]
    assert sorted(secrets) == ["access_key", "secret_key", "token", "tokens"]
    config = StorageConfig.from_env(S3)
    for text in (repr(config), str(config), str(config.model_dump())):
        assert "access-key-1234" not in text and "secret-key-5678" not in text
    assert config.secret_key.get_secret_value() == "secret-key-5678"
    with pytest.raises(ConfigError) as error:
        StorageConfig.from_env({**S3, "PNEUMONIA_STORAGE_RETRIES": "x"})
    assert "secret-key-5678" not in str(error.value) and error.value.__suppress_context__


def variables(model: type[Settings]) -> list[str]:
    return [model.variable(name) for name in env_fields(model)]


@pytest.mark.parametrize("service", SERVICES)
def test_help_lists_the_service_settings(service: str, capsys: pytest.CaptureFixture[str]) -> None:
    main = importlib.import_module(f"services.{service}.__main__").main
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    model = MODELS[SERVICES[service]]
    assert settings_help(model) in text
    for variable in variables(model):
        assert re.search(rf"^ +{variable} ", text, flags=re.MULTILINE), variable
    assert "PNEUMONIA_TRAINER_GRPC_PORT" not in text or service == "trainer"


def test_help_shows_type_default_and_meaning() -> None:
    text = settings_help(MODELS["GeneratorConfig"])
    assert re.search(r"^ +PNEUMONIA_GENERATOR_GRPC_PORT +integer 0-65535; default: 50052\n +gRPC port", text, re.M)
    assert re.search(r"^ +PNEUMONIA_GENERATOR_DEVICE +auto \| cpu \| cuda; default: auto$", text, re.M)


def test_readme_settings_tables_match_the_models() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert settings_docs.readme_block(readme) == settings_docs.render(), "run python scripts/settings_docs.py"
    assert settings_docs.main(["--check"]) == 0
