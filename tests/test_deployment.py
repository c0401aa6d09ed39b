"""The deployment files, checked offline with the real tools and against the code, so that they cannot drift.

Tools (dev dependencies; a missing one fails, never skips): hadolint on every Dockerfile, Docker Compose v2's own
parser on docker-compose.yml, kubectl kustomize on every kustomization and kubernetes-validate on what it renders
(scripts/validate_deploy.py). Consistency: environment variable names and ports in the Dockerfiles, compose and
Kubernetes are the ones the services' config modules document and accept; commands are importable modules or the
experiment's own plan; image names and tags agree; no secret value is committed.
"""

from __future__ import annotations

import argparse
import copy
import importlib
import importlib.util
import json
import re
import shlex
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml
from torch.distributed.run import get_args_parser as torchrun_parser

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("validate_deploy", ROOT / "scripts" / "validate_deploy.py")
assert _spec is not None and _spec.loader is not None
validate_deploy = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(validate_deploy)

# service -> its config module (the PNEUMONIA_<SERVICE>_* variables, documented in the module docstring)
CONFIG_MODULES = {
    "trainer": "services.trainer.config",
    "generator": "services.generator.config",
    "analyzer": "services.analyzer.config",
    "classifier": "services.classifier.config",
    "web": "services.web.config",
}
STORAGE_CONFIG = "shared.storage.config"
BUCKET_VARIABLES = {
    "PNEUMONIA_DATASETS_BUCKET",
    "PNEUMONIA_SYNTHETIC_BUCKET",
    "PNEUMONIA_MODELS_BUCKET",
    "PNEUMONIA_RESULTS_BUCKET",
}
# compose service -> the service whose config it runs
COMPOSE_SERVICES = {
    "trainer": "trainer",
    "trainer-cpu": "trainer",
    "generator": "generator",
    "classifier": "classifier",
    "analyzer": "analyzer",
    "web": "web",
}
VARIANTS = {"gpu": "cuda", "cpu": "cpu"}  # device profile / overlay -> image variant
PIPELINE = "pipeline"  # the image of the `pneumonia` command (pipeline/Dockerfile): orchestrator and step Jobs
IMAGES = [*sorted(CONFIG_MODULES), PIPELINE]
OVERLAY_PROFILES = {"cpu": "quick", "gpu": "full"}  # overlay -> experiment profile its Jobs run
FOLD_FLAG = ["--fold-index", "$(JOB_COMPLETION_INDEX)"]  # one pod per fold (docs/deployment.md)
VARIABLE = re.compile(r"PNEUMONIA_[A-Z0-9_]+")
# Deployments of servers that are not ours, run from our images: MLflow's tracking server (pipeline image).
TOOL_DEPLOYMENTS = ("mlflow",)


# ---------------------------------------------------------------------------------------------------- helpers


def project_version() -> str:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]


def documented_variables(module_name: str) -> set[str]:
    """The PNEUMONIA_* variables a config module's docstring lists (indented lines starting with the name)."""
    doc = importlib.import_module(module_name).__doc__ or ""
    return set(re.findall(r"^\s{2,}(PNEUMONIA_[A-Z0-9_]+)", doc, flags=re.MULTILINE))


def config_class(module: ModuleType) -> Any:
    """The module's config dataclass: the class defined there with a from_env classmethod."""
    for value in vars(module).values():
        if isinstance(value, type) and value.__module__ == module.__name__ and hasattr(value, "from_env"):
            return value
    raise AssertionError(f"{module.__name__} defines no config class with from_env")


def service_config(service: str, env: dict[str, str]) -> Any:
    """The service's config as it would read `env` (ConfigError for a bad value)."""
    return config_class(importlib.import_module(CONFIG_MODULES[service])).from_env(env)


def config_ports(config: Any) -> set[int]:
    return {getattr(config, name) for name in type(config).model_fields if name.endswith("_port")}


def allowed_variables(service: str) -> set[str]:
    return documented_variables(CONFIG_MODULES[service]) | documented_variables(STORAGE_CONFIG) | BUCKET_VARIABLES


def dockerfile_path(image: str) -> Path:
    """A service's Dockerfile, or the pipeline's."""
    return ROOT / PIPELINE / "Dockerfile" if image == PIPELINE else ROOT / "services" / image / "Dockerfile"


def dockerfile_text(image: str) -> str:
    return dockerfile_path(image).read_text()


def stage(text: str, name: str) -> list[tuple[str, str]]:
    """The instructions of the stage `FROM ... AS name`, up to the next FROM."""
    instructions = dockerfile_instructions(text)
    start = next(
        i for i, (word, arguments) in enumerate(instructions) if word == "FROM" and arguments.endswith(f" {name}")
    )
    end = next((i for i in range(start + 1, len(instructions)) if instructions[i][0] == "FROM"), len(instructions))
    return instructions[start:end]


def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    joined = re.sub(r"\\\n", " ", "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#")))
    result = []
    for line in joined.splitlines():
        if line.strip():
            word, _, rest = line.strip().partition(" ")
            result.append((word.upper(), rest.strip()))
    return result


def runtime_env(service: str) -> dict[str, str]:
    """The ENV of the Dockerfile's last stage (key=value pairs)."""
    text = dockerfile_text(service)
    last_stage = text[text.rindex("\nFROM ") :]
    env: dict[str, str] = {}
    for instruction, arguments in dockerfile_instructions(last_stage):
        if instruction == "ENV":
            env.update(word.split("=", 1) for word in shlex.split(arguments))
    return env


def exec_form(text: str, instruction: str) -> list[str]:
    """The JSON-form arguments of the last `instruction` (CMD, or HEALTHCHECK's CMD)."""
    values = [arguments for name, arguments in dockerfile_instructions(text) if name == instruction]
    assert values, f"no {instruction}"
    arguments = values[-1]
    if instruction == "HEALTHCHECK":
        arguments = arguments[arguments.index("CMD ") + 4 :]
    return json.loads(arguments)


def module_runs(module: str) -> bool:
    """`python -m module` can run: a module, or a package with __main__."""
    spec = importlib.util.find_spec(module)
    if spec is None:
        return False
    return spec.submodule_search_locations is None or importlib.util.find_spec(f"{module}.__main__") is not None


def k8s_objects(text: str) -> list[dict[str, Any]]:
    return [document for document in yaml.safe_load_all(text) if document]


def pod_spec(obj: dict[str, Any]) -> dict[str, Any] | None:
    if obj["kind"] in ("Deployment", "StatefulSet", "Job"):
        return obj["spec"]["template"]["spec"]
    return None


def container_env(container: dict[str, Any], config_maps: dict[str, dict[str, str]]) -> dict[str, str]:
    """A container's environment: its ConfigMap envFrom, its env; secrets become placeholders."""
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            env.update(config_maps[source["configMapRef"]["name"]])
        if "secretRef" in source:
            env.update(validate_deploy.K8S_SECRETS)
    for variable in container.get("env", []):
        if "value" in variable:
            env[variable["name"]] = variable["value"]
        elif "secretKeyRef" in variable.get("valueFrom", {}):
            env[variable["name"]] = validate_deploy.K8S_SECRETS[variable["valueFrom"]["secretKeyRef"]["key"]]
    return env


def experiment_plan(profile: str) -> dict[str, list[str]]:
    """pipeline.plan.plan for the layout the Jobs use (work volume at /work)."""
    from pipeline.experiment import add_arguments
    from pipeline.plan import plan

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    # The Jobs synthesize PneumoniaMNIST's minority class, normal, by name: --synthesize minority would read the data.
    args = parser.parse_args(
        ["--profile", profile, "--dataset", "pneumoniamnist", "--data-dir", "/work/data/pneumoniamnist"]
        + ["--work-dir", "/work", "--synthesize", "normal"]
    )
    return {step.name.replace(" (", "-").rstrip(")"): step.argv for step in plan(args)}


def parsed_step(argv: list[str]) -> tuple[dict[str, Any], list[str]]:
    """A `pneumonia` argv parsed by the CLI's own parser: (options, arguments it does not know)."""
    from pipeline.cli import build_parser

    namespace, unknown = build_parser().parse_known_args(argv)
    options = {key: value for key, value in vars(namespace).items() if key not in ("handler", "parser")}
    return options, unknown


# ---------------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def compose_models() -> dict[str, dict[str, Any]]:
    """docker-compose.yml resolved by Docker Compose for each device profile (with the orchestrator's profile)."""
    models = {}
    for profile in validate_deploy.DEVICE_PROFILES:
        env = validate_deploy.compose_env({"PNEUMONIA_VARIANT": VARIANTS[profile]})
        result = validate_deploy.compose_config([profile, "experiment"], env)
        assert result.returncode == 0, result.stderr
        models[profile] = json.loads(result.stdout)
    return models


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict[str, Any]]]:
    """Every overlay rendered by kubectl kustomize (placeholder secrets)."""
    return {
        overlay: k8s_objects(validate_deploy.render_kustomization(Path("overlays") / overlay))
        for overlay in OVERLAY_PROFILES
    }


# The multi-GPU Job's command: one training process per visible GPU (services/trainer: shared/distributed.py).
TORCHRUN = ["torchrun", "--standalone", "--nproc-per-node", "gpu", "--no-python", "pneumonia"]


def workloads(objects: list[dict[str, Any]]) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    for obj in objects:
        spec = pod_spec(obj)
        if spec is not None:
            yield obj, spec


def config_maps(objects: list[dict[str, Any]]) -> dict[str, dict[str, str]]:
    return {obj["metadata"]["name"]: obj.get("data", {}) for obj in objects if obj["kind"] == "ConfigMap"}


# ---------------------------------------------------------------------------------------------------- real tools


@pytest.mark.parametrize("dockerfile", validate_deploy.dockerfiles(), ids=lambda path: path.parent.name)
def test_hadolint_passes(dockerfile: Path) -> None:
    result = validate_deploy.hadolint(dockerfile)
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_catches_a_bad_dockerfile(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN apt-get install curl\nCMD python app.py\n")
    result = validate_deploy.hadolint(bad)
    assert result.returncode != 0
    assert "DL3007" in result.stdout and "DL3025" in result.stdout


def test_every_service_has_a_dockerfile() -> None:
    assert validate_deploy.dockerfiles() == [dockerfile_path(image) for image in IMAGES]


def test_compose_parser_rejects_broken_files(tmp_path: Path) -> None:
    """The parser is real: an unknown key, a dangling depends_on and a missing secret all fail."""
    original = validate_deploy.COMPOSE_FILE.read_text()
    broken = {
        "unknown key": original.replace("    shm_size:", "    shm_sise:", 1),
        "dangling depends_on": original.replace(
            "      generator:\n        condition:", "      genrator:\n        condition:"
        ),
    }
    for problem, text in broken.items():
        assert text != original, problem
        path = tmp_path / "docker-compose.yml"
        path.write_text(text)
        result = validate_deploy.compose_config(["gpu", "experiment"], validate_deploy.compose_env(), compose_file=path)
        assert result.returncode != 0, problem
    env = validate_deploy.compose_env()
    del env["MINIO_ROOT_PASSWORD"]
    result = validate_deploy.compose_config(["gpu"], env)
    assert result.returncode != 0
    assert "MINIO_ROOT_PASSWORD" in result.stderr


@pytest.mark.parametrize("directory", validate_deploy.kustomizations(), ids=str)
def test_kustomization_renders_and_validates(directory: Path) -> None:
    manifests = validate_deploy.render_kustomization(directory)
    result = validate_deploy.kubernetes_validate(manifests)
    assert result.returncode == 0, result.stdout + result.stderr
    assert len(k8s_objects(manifests)) > 10


def test_kubernetes_validate_rejects_a_broken_manifest(rendered: dict[str, list[dict[str, Any]]]) -> None:
    deployment = copy.deepcopy(next(obj for obj in rendered["cpu"] if obj["kind"] == "Deployment"))
    deployment["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"] = "eighty"
    deployment["spec"]["replicaz"] = 2
    result = validate_deploy.kubernetes_validate(yaml.safe_dump(deployment))
    assert result.returncode != 0
    assert "containerPort" in result.stdout + result.stderr


def test_both_overlays_exist() -> None:
    assert {Path("base"), Path("overlays/cpu"), Path("overlays/gpu")} <= set(validate_deploy.kustomizations())


# ---------------------------------------------------------------------------------------------------- images


@pytest.mark.parametrize("service", sorted(CONFIG_MODULES))
def test_dockerfile_runs_the_service_module_as_non_root(service: str) -> None:
    text = dockerfile_text(service)
    command = exec_form(text, "CMD")
    assert command == ["python", "-m", f"services.{service}"]
    assert module_runs(command[2]), f"`python -m {command[2]}` has nothing to run"
    users = [arguments for name, arguments in dockerfile_instructions(text) if name == "USER"]
    assert users and users[-1].split(":")[0] not in ("0", "root")


@pytest.mark.parametrize("service", sorted(CONFIG_MODULES))
def test_dockerfile_env_ports_and_healthcheck_match_the_config(service: str) -> None:
    env = runtime_env(service)
    service_variables = {name for name in env if VARIABLE.fullmatch(name)}
    assert service_variables <= allowed_variables(service), service_variables - allowed_variables(service)
    config = service_config(service, env)
    exposed = {
        int(port)
        for name, arguments in dockerfile_instructions(dockerfile_text(service))
        if name == "EXPOSE"
        for port in arguments.split()
    }
    assert exposed == config_ports(config)
    check = exec_form(dockerfile_text(service), "HEALTHCHECK")
    if service == "classifier":  # the model answers: /ping with the key, a READY worker per model (its settings)
        assert check == ["python", "-m", "services.classifier.health"] and module_runs(check[2])
        return
    assert check[:3] == ["python", "-m", "shared.healthcheck"] and module_runs("shared.healthcheck")
    target = re.sub(r"\$\{(\w+)\}", lambda match: env[match.group(1)], check[3])
    port = int(re.search(r":(\d+)", target).group(1))
    assert port in config_ports(config)
    if service in ("generator", "web"):  # the web page has no gRPC server: its HTTP /healthz
        assert target == f"http://127.0.0.1:{config.http_port}/healthz"
    else:
        assert target == f"127.0.0.1:{config.grpc_port}"  # grpc.health.v1 of the service's server


def test_dockerfiles_share_their_dependency_stages() -> None:
    """The stages before `extra` (torch and the core) are the same text everywhere, so the images share those
    layers."""

    def shared_part(image: str) -> str:
        text = dockerfile_text(image)
        text = re.sub(r"# ---- java:.*?\n\n", "", text, flags=re.DOTALL)  # the classifier's extra Java stage
        text = text.replace("ARG JAVA_IMAGE=eclipse-temurin:17.0.13_11-jre-jammy\n", "")
        return text[text.index("ARG PYTHON_IMAGE=") : text.index("# ---- extra")]

    parts = {image: shared_part(image) for image in IMAGES}
    assert len(set(parts.values())) == 1, "the dependency stages differ between the Dockerfiles"


def copied_sources(text: str) -> set[str]:
    """What the `app` stage copies from the build context."""
    return {arguments.rsplit(" ", 1)[0] for word, arguments in stage(text, "app") if word == "COPY"}


LOCKED_INSTALL = "pip install --require-hashes --no-deps --no-build-isolation "


def installed_extras(text: str) -> list[str]:
    """The extras the `extra` stage installs: their requirement files from the lock (requirements/<extra>.txt),
    hash-checked, nothing resolved."""
    (install,) = [arguments for word, arguments in stage(text, "extra") if word == "RUN"]
    assert install.startswith(LOCKED_INSTALL), install
    return re.findall(r"-r /build/requirements/([\w-]+)\.txt", install)


@pytest.mark.parametrize("image", IMAGES)
def test_every_image_installs_only_from_the_lock_with_hashes(image: str) -> None:
    """Every `pip install` of an image reads a file of requirements/ with hashes checked; the exceptions are our own
    package (--no-deps, from the build context) and VARIANT=cpu's PyTorch wheels (pinned to the lock's versions,
    from PyTorch's index, which PyPI's hashes cannot check)."""
    text = dockerfile_text(image)
    installs = re.findall(r"pip install [^;\n]*", text.replace("\\\n", " "))
    assert installs
    for install in installs:
        if install.strip() == "pip install --no-deps --no-build-isolation /build":
            continue
        if "/build/torch-cpu.txt" in install:
            assert install.strip() == "pip install --no-deps -r /build/torch-cpu.txt", install
            continue
        locked = (
            r'pip install --require-hashes --no-deps( --no-build-isolation)? -r "?/build/requirements/[\w${}-]+\.txt"?'
        )
        assert re.fullmatch(locked, install.strip()), install
    for copied in re.findall(r"^COPY (requirements/\S+)", text, flags=re.MULTILINE):
        assert (ROOT / copied).is_file(), copied


@pytest.mark.parametrize("service", sorted(CONFIG_MODULES))
def test_a_service_image_holds_only_its_code_and_its_extra(service: str) -> None:
    text = dockerfile_text(service)
    assert copied_sources(text) == {
        "README.md pyproject.toml",
        "proto/gen",
        "shared",
        "services/__init__.py",
        f"services/{service}",
    }
    assert installed_extras(text) == [service]
    assert service in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]


def test_the_pipeline_image_holds_all_the_code_and_every_extra() -> None:
    text = dockerfile_text(PIPELINE)
    assert copied_sources(text) == {"README.md pyproject.toml", "proto/gen", "shared", "services", PIPELINE}
    assert installed_extras(text) == [PIPELINE]  # the pipeline extra names every service's
    assert exec_form(text, "CMD")[0] == "pneumonia"
    users = [arguments for name, arguments in dockerfile_instructions(text) if name == "USER"]
    assert users and users[-1].split(":")[0] not in ("0", "root")


@pytest.mark.parametrize("image", IMAGES)
def test_dockerfile_bases_are_pinned_and_layers_cache_friendly(image: str) -> None:
    text = dockerfile_text(image)
    for image in re.findall(r"^ARG \w+_IMAGE=(\S+)$", text, flags=re.MULTILINE):
        name, _, tag = image.partition(":")
        assert tag and tag != "latest" and re.search(r"\d+\.\d+", tag), f"{image} is not a pinned tag"
    instructions = [f"{name} {arguments}" for name, arguments in dockerfile_instructions(text)]
    install = next(i for i, line in enumerate(instructions) if '-r "/build/requirements/${core}.txt"' in line)
    first_source = next(i for i, line in enumerate(instructions) if line.startswith("COPY shared"))
    assert install < first_source, "dependencies must be installed before the source is copied"
    assert "VARIANT" in text and "download.pytorch.org/whl/cpu" in text
    assert not re.search(r"(?i)(password|secret|token)\s*=", text)


def test_torch_pins_reach_the_images() -> None:
    """torch and torchvision keep pyproject.toml's exact pins in the lock the images install (core.txt for
    VARIANT=cuda; VARIANT=cpu reads the same versions from it), and no CUDA library is left in core-without-torch.txt,
    which holds the rest of the core."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pins = [dep for dep in project["dependencies"] if re.match(r"^(torch|torchvision)==", dep)]
    assert pins == ["torch==2.14.1", "torchvision==0.29.1"]
    core = (ROOT / "requirements" / "core.txt").read_text()
    for pin in pins:
        assert re.search(rf"^{re.escape(pin)} \\$", core, flags=re.MULTILINE), pin
    pinned = set(re.findall(r"^([a-z0-9-]+)==", core, flags=re.MULTILINE))
    cpu = set(re.findall(r"^([a-z0-9-]+)==", (ROOT / "requirements" / "core-without-torch.txt").read_text(), re.M))
    cuda_only = {name for name in pinned if re.match(r"(torch|torchvision|triton|nvidia-.*|cuda-.*)$", name)}
    assert {"torch", "torchvision", "triton", "nvidia-cublas"} <= cuda_only
    assert cpu == pinned - cuda_only
    assert {"numpy", "sympy", "networkx", "filelock", "jinja2", "fsspec"} <= cpu  # what PyTorch's CPU wheels need


def test_classifier_image_has_java_17() -> None:
    text = dockerfile_text("classifier")
    assert re.search(r"^ARG JAVA_IMAGE=eclipse-temurin:17\.", text, flags=re.MULTILINE)
    assert "COPY --from=java /opt/java/openjdk /opt/java/openjdk" in text
    assert "JAVA_HOME=/opt/java/openjdk" in text


def test_dockerignore_is_an_allowlist() -> None:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    assert "*" in lines
    allowed = {line[1:].rstrip("/") for line in lines if line.startswith("!")}
    assert allowed == {"pyproject.toml", "requirements", "README.md", "proto/gen", "shared", "services", PIPELINE}


# ---------------------------------------------------------------------------------------------------- compose


@pytest.mark.parametrize("profile", validate_deploy.DEVICE_PROFILES)
def test_compose_services_match_their_config(profile: str, compose_models: dict[str, dict[str, Any]]) -> None:
    services = compose_models[profile]["services"]
    version, variant = project_version(), VARIANTS[profile]
    ours = [name for name in services if name in COMPOSE_SERVICES]
    assert sorted(ours) == sorted(
        {"generator", "classifier", "analyzer", "web", "trainer" if profile == "gpu" else "trainer-cpu"}
    )
    for name in ours:
        service, spec = COMPOSE_SERVICES[name], services[name]
        env = {key: value for key, value in spec["environment"].items() if value is not None}
        assert set(env) <= allowed_variables(service), set(env) - allowed_variables(service)
        config = service_config(service, env)
        assert {int(port["target"]) for port in spec.get("ports", [])} <= config_ports(config)
        assert spec["image"] == f"pneumonia/{service}:{version}-{variant}"
        assert spec["build"]["dockerfile"] == f"services/{service}/Dockerfile"
        assert spec["build"]["args"]["VARIANT"] == variant
        assert spec["read_only"] and spec["cap_drop"] == ["ALL"]
        assert spec["depends_on"]["minio-init"]["condition"] == "service_completed_successfully"
        if name == "classifier":  # TorchServe fetches presigned URLs of the endpoint: no credentials
            assert (env["PNEUMONIA_STORAGE_BACKEND"], env["PNEUMONIA_S3_ENDPOINT"]) == ("s3", "minio:9000")
            continue
        storage = importlib.import_module(STORAGE_CONFIG).StorageConfig.from_env(env)
        assert (storage.backend, storage.endpoint, storage.secure) == ("s3", "minio:9000", False)


def test_compose_gpu_profile_reserves_gpus(compose_models: dict[str, dict[str, Any]]) -> None:
    gpu = compose_models["gpu"]["services"]["trainer"]
    devices = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia" and devices[0]["capabilities"] == ["gpu"]
    cpu = compose_models["cpu"]["services"]["trainer-cpu"]
    assert "deploy" not in cpu
    assert "trainer" in cpu["networks"]["default"]["aliases"]  # the orchestrator finds it under the same name


def test_compose_publishes_no_management_port(compose_models: dict[str, dict[str, Any]]) -> None:
    services = compose_models["gpu"]["services"]
    published = {name: {int(port["target"]) for port in spec.get("ports", [])} for name, spec in services.items()}
    classifier = service_config("classifier", services["classifier"]["environment"])
    assert published["classifier"] == {classifier.inference_port, classifier.grpc_port}
    assert not published.get("minio") and not published.get("trainer") and not published.get("analyzer")
    for name, spec in services.items():
        for port in spec.get("ports", []):
            assert port["host_ip"] == "127.0.0.1", f"{name} publishes on {port['host_ip']} by default"


def test_compose_start_order_is_health_gated(compose_models: dict[str, dict[str, Any]]) -> None:
    services = compose_models["cpu"]["services"]
    orchestrator = services["orchestrator"]["depends_on"]
    for name in ("generator", "classifier", "analyzer", "trainer", "trainer-cpu"):
        assert orchestrator[name]["condition"] == "service_healthy"
    assert services["minio-init"]["depends_on"]["minio"]["condition"] == "service_healthy"
    assert "healthcheck" in services["minio"]


def test_compose_orchestrator_reaches_every_service(compose_models: dict[str, dict[str, Any]]) -> None:
    from pipeline.endpoints import ServiceEndpoints
    from pipeline.tracking import TRACKING_URI_VARIABLE

    services = compose_models["gpu"]["services"]
    spec = services["orchestrator"]
    env = spec["environment"]
    known = {name for path in (ROOT / "pipeline").glob("*.py") for name in VARIABLE.findall(path.read_text())}
    known |= documented_variables(STORAGE_CONFIG) | BUCKET_VARIABLES | {TRACKING_URI_VARIABLE}
    assert set(env) <= known, set(env) - known
    mlflow = services["mlflow"]  # the tracking server it logs to: its port, health-gated
    assert env[TRACKING_URI_VARIABLE] == f"http://mlflow:{mlflow['ports'][0]['target']}"
    assert f"--port={mlflow['ports'][0]['target']}" in mlflow["command"]
    assert f"--allowed-hosts=mlflow:{mlflow['ports'][0]['target']}" in " ".join(mlflow["command"]).split(",")[0]
    assert spec["depends_on"]["mlflow"]["condition"] == "service_healthy" and "healthcheck" in mlflow
    endpoints = ServiceEndpoints.from_env(env)
    configs = {name: service_config(name, services[name]["environment"]) for name in CONFIG_MODULES}
    assert endpoints.trainer == f"trainer:{configs['trainer'].grpc_port}"
    assert endpoints.generator == f"generator:{configs['generator'].grpc_port}"
    assert endpoints.analyzer == f"analyzer:{configs['analyzer'].grpc_port}"
    classifier = configs["classifier"]
    assert endpoints.classifier_inference_url == f"http://classifier:{classifier.inference_port}"
    assert endpoints.classifier_management_url == f"http://classifier:{classifier.management_port}"
    assert endpoints.classifier_grpc == f"classifier:{classifier.grpc_port}"
    # the key file TorchServe writes into its workdir, on a volume the orchestrator mounts read-only
    assert endpoints.classifier_key_file == classifier.workdir / "key_file.json"
    mounts = {volume["target"]: volume for volume in spec["volumes"]}
    assert mounts[str(classifier.workdir)]["read_only"] is True
    assert spec["image"] == f"pneumonia/{PIPELINE}:{project_version()}-{VARIANTS['gpu']}"
    assert spec["build"]["dockerfile"] == f"{PIPELINE}/Dockerfile"
    assert spec["build"]["args"]["VARIANT"] == VARIANTS["gpu"]
    command = spec["command"]
    assert command[:3] == ["pneumonia", "experiment", "--via-services"]
    options, unknown = parsed_step(command[1:])
    assert not unknown and options["data_dir"] == "/data" and mounts["/data"]["read_only"] is True


# ---------------------------------------------------------------------------------------------------- kubernetes


@pytest.mark.parametrize("overlay", sorted(OVERLAY_PROFILES))
def test_k8s_services_match_their_config(overlay: str, rendered: dict[str, list[dict[str, Any]]]) -> None:
    objects = rendered[overlay]
    maps = config_maps(objects)
    deployments = {obj["metadata"]["name"]: obj for obj in objects if obj["kind"] == "Deployment"}
    assert sorted(set(deployments) - set(TOOL_DEPLOYMENTS)) == sorted(CONFIG_MODULES)
    deployments = {name: obj for name, obj in deployments.items() if name in CONFIG_MODULES}
    k8s_services = [obj for obj in objects if obj["kind"] == "Service"]
    for name, deployment in deployments.items():
        container = deployment["spec"]["template"]["spec"]["containers"][0]
        env = container_env(container, maps)
        assert set(env) <= allowed_variables(name), set(env) - allowed_variables(name)
        config = service_config(name, env)
        ports = {port["name"]: port["containerPort"] for port in container["ports"]}
        assert set(ports.values()) == config_ports(config)
        assert container["image"] == f"pneumonia/{name}:{project_version()}-{VARIANTS[overlay]}"
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            handler = container[probe]
            if "exec" in handler:  # the classifier's readiness: its model answers (the image's HEALTHCHECK)
                assert (name, probe) == ("classifier", "readinessProbe")
                assert handler["exec"]["command"] == exec_form(dockerfile_text(name), "HEALTHCHECK")
                continue
            port = handler.get("grpc", handler.get("httpGet", {})).get("port")
            assert ports.get(port, port) in config_ports(config), f"{name} {probe}"
        if name in ("trainer", "analyzer"):
            assert container["livenessProbe"]["grpc"]["port"] == config.grpc_port  # native gRPC health probes
        for service in k8s_services:
            if service["spec"]["selector"] == {"app.kubernetes.io/name": name}:
                assert {port["targetPort"] for port in service["spec"]["ports"]} <= set(ports)


@pytest.mark.parametrize("overlay", sorted(OVERLAY_PROFILES))
def test_k8s_mlflow_server_is_what_the_track_step_logs_to(
    overlay: str, rendered: dict[str, list[dict[str, Any]]], compose_models: dict[str, dict[str, Any]]
) -> None:
    """The MLflow server runs compose's command, answers its Service's name, keeps its data on a claim, and the
    track-experiment Job (the last step of k8s/experiment.sh) logs to it."""
    objects = {(obj["kind"], obj["metadata"]["name"]): obj for obj in rendered[overlay]}
    pod = objects[("Deployment", "mlflow")]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    compose = compose_models["cpu"]["services"]["mlflow"]["command"]
    assert container["command"][:-1] == compose[:-1]  # only the Host headers it answers differ
    port = container["ports"][0]["containerPort"]
    hosts = container["command"][-1].removeprefix("--allowed-hosts=").split(",")
    assert f"mlflow:{port}" in hosts and f"mlflow.pneumonia.svc.cluster.local:{port}" in hosts
    assert all(container[probe]["httpGet"]["path"] == "/health" for probe in ("startupProbe", "readinessProbe"))
    data = next(m for m in container["volumeMounts"] if m["name"] == "data")
    claim = next(v for v in pod["volumes"] if v["name"] == "data")["persistentVolumeClaim"]["claimName"]
    assert ("PersistentVolumeClaim", claim) in objects and "--backend-store-uri=sqlite:///" + data[
        "mountPath"
    ] + "/mlflow.db" in container["command"]
    assert objects[("Service", "mlflow")]["spec"]["ports"][0]["port"] == port
    track = objects[("Job", "track-experiment")]["spec"]["template"]["spec"]["containers"][0]
    assert (
        track["args"][0] == "track"
        and {"name": "MLFLOW_TRACKING_URI", "value": f"http://mlflow:{port}"} in track["env"]
    )
    assert "run_steps track-experiment" in (ROOT / "k8s" / "experiment.sh").read_text()
    policy = objects[("NetworkPolicy", "mlflow-in-namespace")]["spec"]
    assert policy["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": "mlflow"}
    assert policy["ingress"][0]["ports"] == [{"protocol": "TCP", "port": port}]


def test_k8s_and_compose_use_the_same_images(
    rendered: dict[str, list[dict[str, Any]]], compose_models: dict[str, dict[str, Any]]
) -> None:
    for overlay, profile in (("cpu", "cpu"), ("gpu", "gpu")):
        k8s_images = {
            container["image"]
            for _, spec in workloads(rendered[overlay])
            for container in spec["containers"]
            if container["image"].startswith("pneumonia/")
        }
        compose_services = list(compose_models[profile]["services"].values())
        compose_images = {spec["image"] for spec in compose_services if spec["image"].startswith("pneumonia/")}
        assert k8s_images == compose_images
        third_party = {
            container["image"]
            for _, spec in workloads(rendered[overlay])
            for container in spec["containers"]
            if not container["image"].startswith("pneumonia/")
        }
        compose_third_party = {spec["image"] for spec in compose_services if not spec["image"].startswith("pneumonia/")}
        assert third_party == compose_third_party  # the same pinned MinIO and mc


@pytest.mark.parametrize("overlay", sorted(OVERLAY_PROFILES))
def test_k8s_jobs_run_the_experiment_plan(overlay: str, rendered: dict[str, list[dict[str, Any]]]) -> None:
    """Each step Job runs `pneumonia <step>` with exactly the flags of `pneumonia experiment --profile P`."""
    plan = experiment_plan(OVERLAY_PROFILES[overlay])
    jobs = {
        obj["metadata"]["name"]: obj
        for obj in rendered[overlay]
        if obj["kind"] == "Job" and obj["metadata"]["labels"].get("app.kubernetes.io/component") == "experiment-step"
    }
    assert set(plan) <= set(jobs)
    for step, argv in plan.items():
        job = jobs[step]
        container = job["spec"]["template"]["spec"]["containers"][0]
        assert container["command"] in (["pneumonia"], TORCHRUN) and job["spec"]["suspend"] is True
        assert container["image"] == f"pneumonia/{PIPELINE}:{project_version()}-{VARIANTS[overlay]}"
        # Kubernetes substitutes each pod's completion index; parse as pod 0 would.
        options, unknown = parsed_step([arg.replace("$(JOB_COMPLETION_INDEX)", "0") for arg in container["args"]])
        expected, _ = parsed_step(argv)
        if step.startswith("train-classifier"):
            assert job["spec"]["completionMode"] == "Indexed"
            assert job["spec"]["completions"] == job["spec"]["parallelism"] == expected["k_folds"]
            assert container["args"][-2:] == FOLD_FLAG
            assert options.pop("fold_index") == 0 and expected.pop("fold_index") is None
        assert not unknown
        assert options == expected, step


@pytest.mark.parametrize("overlay", sorted(OVERLAY_PROFILES))
def test_k8s_pods_are_locked_down(overlay: str, rendered: dict[str, list[dict[str, Any]]]) -> None:
    for obj, spec in workloads(rendered[overlay]):
        name = f"{obj['kind']}/{obj['metadata']['name']}"
        pod = spec["securityContext"]
        assert pod["runAsNonRoot"] is True and pod["seccompProfile"]["type"] == "RuntimeDefault", name
        assert spec["automountServiceAccountToken"] is False, name
        for container in spec.get("initContainers", []) + spec["containers"]:
            security = container["securityContext"]
            assert security["allowPrivilegeEscalation"] is False, name
            assert security["readOnlyRootFilesystem"] is True, name
            assert security["capabilities"]["drop"] == ["ALL"], name
            assert {"cpu", "memory"} <= set(container["resources"]["requests"]), name
            assert {"cpu", "memory"} <= set(container["resources"]["limits"]), name
            assert "/tmp" in {mount["mountPath"] for mount in container["volumeMounts"]}, name
        if obj["kind"] == "Job":  # bounded: a few retries, and a wall-clock limit over all of them
            assert "backoffLimit" in obj["spec"] and "ttlSecondsAfterFinished" in obj["spec"], name
            assert 0 < obj["spec"]["activeDeadlineSeconds"] <= 2 * 86400, name
            for container in spec["containers"]:  # no shell loop without an end
                script = "\n".join(container.get("command", []) + container.get("args", []))
                assert not re.search(r"\b(until|while)\b", script) or "exit 1" in script, name
    namespace = next(obj for obj in rendered[overlay] if obj["kind"] == "Namespace")
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"


def test_gpu_overlay_trains_the_gan_on_two_gpus_under_torchrun(rendered: dict[str, list[dict[str, Any]]]) -> None:
    """torchrun's own parser reads the Job's command as one process per GPU, running `pneumonia train-gan`; the pod
    asks for more than one GPU. Only training steps run under torchrun, and only where GPUs are."""
    multi = {}
    for overlay, objects in rendered.items():
        for obj, spec in workloads(objects):
            if spec["containers"][0].get("command", [None])[0] == "torchrun":
                multi[(overlay, obj["metadata"]["name"])] = spec["containers"][0]
    assert set(multi) == {("gpu", "train-gan")}
    container = multi[("gpu", "train-gan")]
    options = torchrun_parser().parse_args(container["command"][1:] + container["args"])
    assert options.standalone and options.no_python and options.nproc_per_node == "gpu"
    assert [options.training_script, options.training_script_args[0]] == ["pneumonia", "train-gan"]
    gpus = container["resources"]["limits"]["nvidia.com/gpu"]
    assert int(gpus) > 1 and container["resources"]["requests"]["nvidia.com/gpu"] == gpus


def test_gpu_overlay_requests_gpus(rendered: dict[str, list[dict[str, Any]]]) -> None:
    for overlay, wants in (("gpu", True), ("cpu", False)):
        for obj, spec in workloads(rendered[overlay]):
            accelerated = obj["metadata"]["labels"].get("pneumonia.io/accelerator") == "gpu"
            limits = spec["containers"][0]["resources"]["limits"]
            assert ("nvidia.com/gpu" in limits) == (wants and accelerated), obj["metadata"]["name"]
            if wants and accelerated:
                assert spec["containers"][0]["resources"]["requests"]["nvidia.com/gpu"] == limits["nvidia.com/gpu"]
                assert spec["nodeSelector"] and spec["tolerations"]
    accelerated = {obj["metadata"]["name"] for obj, _ in workloads(rendered["gpu"])}
    assert {"trainer", "train-gan", "train-classifier-baseline"} <= accelerated
    claims = {obj["metadata"]["name"]: obj for obj in rendered["gpu"] if obj["kind"] == "PersistentVolumeClaim"}
    assert claims["experiment-work"]["spec"]["accessModes"] == ["ReadWriteMany"]


def test_k8s_network_policies_keep_management_and_minio_internal(rendered: dict[str, list[dict[str, Any]]]) -> None:
    policies = [obj for obj in rendered["gpu"] if obj["kind"] == "NetworkPolicy"]
    assert any(policy["spec"]["podSelector"] == {} and not policy["spec"].get("ingress") for policy in policies)
    classifier = service_config("classifier", {})
    internal_ports = {classifier.management_port, classifier.grpc_management_port, classifier.metrics_port, 9000}
    for policy in policies:
        for rule in policy["spec"].get("ingress", []):
            ports = {port["port"] for port in rule.get("ports", [])}
            if ports & internal_ports:
                assert rule.get("from"), f"{policy['metadata']['name']} opens {ports & internal_ports} to anyone"
                assert all("namespaceSelector" not in peer and "ipBlock" not in peer for peer in rule["from"])
    services = {obj["metadata"]["name"]: obj for obj in rendered["gpu"] if obj["kind"] == "Service"}
    assert all(service["spec"].get("type", "ClusterIP") == "ClusterIP" for service in services.values())
    assert {port["port"] for port in services["classifier"]["spec"]["ports"]} == {
        classifier.inference_port,
        classifier.grpc_port,
    }


# ---------------------------------------------------------------------------------------------------- secrets


# A secret variable given a value that is not a reference ($VAR, ${VAR:?...}, "$(command)").
LITERAL_CREDENTIAL = re.compile(
    r"(?im)^[ \t]*-?[ \t]*(MINIO_ROOT_PASSWORD|MINIO_ROOT_USER|PNEUMONIA_(?:[A-Z]+_)?S3_SECRET_KEY"
    r"|PNEUMONIA_ORCHESTRATOR_TOKEN|PNEUMONIA_OPERATOR_TOKEN|PNEUMONIA_AUTH_TOKEN)"
    r"[ \t]*[:=][ \t]*(?![\"']?\$)(\S+)"
)


def deployment_files() -> list[Path]:
    files = [ROOT / "docker-compose.yml", ROOT / ".env.example", *validate_deploy.dockerfiles()]
    files += [path for path in (ROOT / "k8s").rglob("*") if path.is_file() and path.name != "secrets.env"]
    return files


def test_no_secret_values_are_committed() -> None:
    patterns = {
        "private key": re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
        "AWS access key id": re.compile(r"\bAKIA[0-9A-Z]{16}\b"),
        "MinIO default credentials": re.compile(r"minioadmin"),
        "literal credential": LITERAL_CREDENTIAL,
    }
    for path in deployment_files():
        text = path.read_text()
        for problem, pattern in patterns.items():
            match = pattern.search(text)
            assert match is None, f"{path.relative_to(ROOT)}: {problem}: {match.group(0)!r}"
    # the example files name every secret, with no value
    examples = {
        ROOT / ".env.example": validate_deploy.COMPOSE_SECRETS,
        ROOT / "k8s" / "base" / "secrets.env.example": validate_deploy.K8S_SECRETS,
    }
    for example, secrets in examples.items():
        values = dict(line.split("=", 1) for line in example.read_text().splitlines() if "=" in line)
        for key in secrets:
            assert values[key] == "", f"{example.name} sets {key}"
    # compose: every secret comes from .env, required (`${NAME:?message}`)
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    environments = [compose["x-storage-env"]] + [spec.get("environment", {}) for spec in compose["services"].values()]
    for environment in environments:
        for key in set(environment) & set(validate_deploy.COMPOSE_SECRETS):
            assert environment[key].startswith(f"${{{key}:?"), key
        if "PNEUMONIA_S3_SECRET_KEY" in environment:  # a service's own account: pneumonia-<name> and its secret
            name = environment["PNEUMONIA_S3_ACCESS_KEY"].removeprefix("pneumonia-")
            assert environment["PNEUMONIA_S3_SECRET_KEY"].startswith(f"${{PNEUMONIA_{name.upper()}_S3_SECRET_KEY:?")
    # the services' accepted tokens and the orchestrator's own: references to required .env secrets only
    reference = r"\$\{PNEUMONIA_(ORCHESTRATOR|OPERATOR)_TOKEN:\?[^}]*\}"
    assert re.fullmatch(
        f"(orchestrator|operator)={reference}(,(orchestrator|operator)={reference})*",
        compose["x-auth-env"]["PNEUMONIA_AUTH_TOKENS"],
    )
    assert re.fullmatch(reference, compose["services"]["orchestrator"]["environment"]["PNEUMONIA_AUTH_TOKEN"])
    # k8s: credentials only through the generated Secret
    assert "secrets.env" in (ROOT / "k8s" / ".gitignore").read_text()
    git = subprocess.run(
        ["git", "check-ignore", "-q", "k8s/base/secrets.env"], cwd=ROOT, capture_output=True, check=False
    )
    assert git.returncode == 0, "k8s/base/secrets.env is not ignored by git"


def test_the_secret_scan_finds_a_planted_secret(tmp_path: Path) -> None:
    assert LITERAL_CREDENTIAL.search("    environment:\n      PNEUMONIA_S3_SECRET_KEY: hunter2hunter2\n")
    assert LITERAL_CREDENTIAL.search("MINIO_ROOT_PASSWORD=hunter2hunter2\n")
    assert not LITERAL_CREDENTIAL.search("      PNEUMONIA_S3_SECRET_KEY: ${PNEUMONIA_S3_SECRET_KEY:?set it}\n")
    assert not LITERAL_CREDENTIAL.search("MINIO_ROOT_PASSWORD=\nPNEUMONIA_S3_ACCESS_KEY=\n")


def test_validate_deploy_script_passes() -> None:
    """`make validate-deploy` as a user runs it."""
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "validate_deploy.py")],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "all deployment files are valid" in result.stdout


def test_each_service_gets_only_the_credentials_it_uses(
    compose_models: dict[str, dict[str, Any]], rendered: dict[str, list[dict[str, Any]]]
) -> None:
    """TorchServe, the one service published to clients, holds no storage credential (it fetches presigned URLs);
    the trainer, generator and analyzer hold the callers' tokens; the orchestrator holds its own token only."""
    storage_keys = {"PNEUMONIA_S3_ACCESS_KEY", "PNEUMONIA_S3_SECRET_KEY"}
    for model in compose_models.values():
        services = model["services"]
        assert not storage_keys & set(services["classifier"]["environment"])
        assert "PNEUMONIA_AUTH_TOKENS" not in services["classifier"]["environment"]
        for name in ("generator", "analyzer", "trainer-cpu" if "trainer-cpu" in services else "trainer"):
            account = name.removesuffix("-cpu")  # each its own storage account
            assert services[name]["environment"]["PNEUMONIA_S3_ACCESS_KEY"] == f"pneumonia-{account}"
            secret = validate_deploy.COMPOSE_SECRETS[f"PNEUMONIA_{account.upper()}_S3_SECRET_KEY"]
            assert services[name]["environment"]["PNEUMONIA_S3_SECRET_KEY"] == secret
            tokens = services[name]["environment"]["PNEUMONIA_AUTH_TOKENS"]
            assert tokens == (
                f"orchestrator={validate_deploy.COMPOSE_SECRETS['PNEUMONIA_ORCHESTRATOR_TOKEN']},"
                f"operator={validate_deploy.COMPOSE_SECRETS['PNEUMONIA_OPERATOR_TOKEN']}"
            )
        orchestrator = services["orchestrator"]["environment"]
        assert orchestrator["PNEUMONIA_AUTH_TOKEN"] == validate_deploy.COMPOSE_SECRETS["PNEUMONIA_ORCHESTRATOR_TOKEN"]
        assert "PNEUMONIA_AUTH_TOKENS" not in orchestrator
    for objects in rendered.values():
        config_maps = {obj["metadata"]["name"]: obj.get("data", {}) for obj in objects if obj["kind"] == "ConfigMap"}
        for obj in objects:
            spec = pod_spec(obj)
            if spec is None:
                continue
            for container in spec["containers"]:
                env = container_env(container, config_maps)
                name = obj["metadata"]["name"]
                if name == "classifier":
                    assert not storage_keys & set(env) and "PNEUMONIA_AUTH_TOKENS" not in env
                if name in ("trainer", "generator", "analyzer"):
                    assert env["PNEUMONIA_AUTH_TOKENS"] == validate_deploy.K8S_SECRETS["PNEUMONIA_AUTH_TOKENS"]
                own_account = ("trainer", "generator", "analyzer", "web")
                account = name if name in own_account else "orchestrator"  # Jobs: its account
                if "PNEUMONIA_S3_ACCESS_KEY" in env:
                    assert env["PNEUMONIA_S3_ACCESS_KEY"] == f"pneumonia-{account}", name
                    secret = validate_deploy.K8S_SECRETS[f"PNEUMONIA_{account.upper()}_S3_SECRET_KEY"]
                    assert env["PNEUMONIA_S3_SECRET_KEY"] == secret, name
        policies = next(obj for obj in objects if obj["metadata"]["name"].startswith("storage-policies"))
        for path in (ROOT / "k8s" / "base" / "storage-policies").glob("*.json"):  # what minio-init applies
            assert json.loads(policies["data"][path.name]) == json.loads(path.read_text())


_secrets_spec = importlib.util.spec_from_file_location("make_secrets", ROOT / "scripts" / "make_secrets.py")
make_secrets = importlib.util.module_from_spec(_secrets_spec)
_secrets_spec.loader.exec_module(make_secrets)


def test_make_env_fills_every_secret_once_and_compose_accepts_the_result(tmp_path: Path) -> None:
    from shared.auth import AuthConfig

    env_file = tmp_path / ".env"
    env_file.write_text("MINIO_ROOT_PASSWORD=kept-by-the-user\nMY_OWN=1\n")
    filled = make_secrets.fill(ROOT / ".env.example", env_file)
    values = make_secrets.variables(env_file.read_text())
    assert set(filled) == set(validate_deploy.COMPOSE_SECRETS) - {"MINIO_ROOT_PASSWORD"}
    assert values["MINIO_ROOT_PASSWORD"] == "kept-by-the-user" and values["MY_OWN"] == "1"
    assert all(8 <= len(values[name]) <= 40 for name in values if name.endswith("_S3_SECRET_KEY"))
    assert env_file.stat().st_mode & 0o777 == 0o600
    assert (
        make_secrets.fill(ROOT / ".env.example", env_file) == []
        and make_secrets.variables(env_file.read_text()) == values
    )
    clean = {name: value for name, value in validate_deploy.compose_env().items() if name in ("PATH", "HOME")}
    result = validate_deploy.compose_config(["cpu", "experiment"], clean, env_file=env_file)
    assert result.returncode == 0, result.stderr
    tokens = json.loads(result.stdout)["services"]["generator"]["environment"]["PNEUMONIA_AUTH_TOKENS"]
    assert AuthConfig.from_env({"PNEUMONIA_AUTH_TOKENS": tokens}).callers().names == ("orchestrator", "operator")
    k8s_file = tmp_path / "secrets.env"
    make_secrets.fill(ROOT / "k8s" / "base" / "secrets.env.example", k8s_file)
    k8s_values = make_secrets.variables(k8s_file.read_text())
    assert set(k8s_values) == set(validate_deploy.K8S_SECRETS) and all(k8s_values.values())
    AuthConfig.from_env({"PNEUMONIA_AUTH_TOKENS": k8s_values["PNEUMONIA_AUTH_TOKENS"]}).callers()


def test_the_classifier_keeps_its_models_across_restarts(rendered: dict[str, list[dict[str, Any]]]) -> None:
    """TorchServe's workdir (its snapshots) and model store are on a claim, mounted where the service looks."""
    for objects in rendered.values():
        claims = {obj["metadata"]["name"] for obj in objects if obj["kind"] == "PersistentVolumeClaim"}
        classifier = next(
            obj for obj in objects if obj["kind"] == "Deployment" and obj["metadata"]["name"] == "classifier"
        )
        spec = pod_spec(classifier)
        volumes = {volume["name"]: volume for volume in spec["volumes"]}
        container = spec["containers"][0]
        env = {variable["name"]: variable.get("value") for variable in container["env"]}
        mounts = {mount["mountPath"]: mount for mount in container["volumeMounts"]}
        for variable in ("PNEUMONIA_CLASSIFIER_WORKDIR", "PNEUMONIA_CLASSIFIER_MODEL_STORE"):
            volume = volumes[mounts[env[variable]]["name"]]
            assert volume["persistentVolumeClaim"]["claimName"] in claims, variable
        assert classifier["spec"]["strategy"]["type"] == "Recreate"
        assert env.get("PNEUMONIA_CLASSIFIER_RESTORE", "true") == "true"


def test_third_party_images_are_pinned_by_digest(
    compose_models: dict[str, dict[str, Any]], rendered: dict[str, list[dict[str, Any]]]
) -> None:
    """A tag can be moved; a digest cannot. Ours (pneumonia/*) are built here; the JDK base (Temurin) has no digest we
    could confirm and keeps its tag (README, Security)."""
    pinned = re.compile(r"[^@\s]+:[^@\s]+@sha256:[0-9a-f]{64}")
    images = [spec["image"] for model in compose_models.values() for spec in model["services"].values()]
    images += [
        container["image"]
        for objects in rendered.values()
        for obj in objects
        if (spec := pod_spec(obj)) is not None
        for container in spec.get("initContainers", []) + spec["containers"]
    ]
    third_party = {image for image in images if not image.startswith("pneumonia/")}
    assert third_party and all(pinned.fullmatch(image) for image in third_party), third_party
    for dockerfile in validate_deploy.dockerfiles():
        default = re.search(r"^ARG PYTHON_IMAGE=(\S+)$", dockerfile.read_text(), re.MULTILINE)
        assert default and pinned.fullmatch(default.group(1)), dockerfile


def test_the_web_page_reads_torchserves_key_read_only_and_is_published_on_loopback(
    compose_models: dict[str, dict[str, Any]], rendered: dict[str, list[dict[str, Any]]]
) -> None:
    """services/web: the operator's token only, its own read-only storage account, TorchServe's key file from the
    classifier's workdir mounted read-only (compose volume; k8s: the classifier's claim, on its node), its port on
    127.0.0.1 only, and no NetworkPolicy letting other pods in (a person uses kubectl port-forward)."""
    for model in compose_models.values():
        services = model["services"]
        spec, env = services["web"], services["web"]["environment"]
        classifier = service_config("classifier", services["classifier"]["environment"])
        web = service_config("web", env)
        assert env["PNEUMONIA_AUTH_TOKENS"] == f"operator={validate_deploy.COMPOSE_SECRETS['PNEUMONIA_OPERATOR_TOKEN']}"
        assert web.inference_url == f"http://classifier:{classifier.inference_port}"
        assert web.key_file == classifier.workdir / "key_file.json"
        mounts = {volume["target"]: volume for volume in spec["volumes"]}
        assert mounts[str(classifier.workdir)]["read_only"] is True
        assert mounts[str(classifier.workdir)]["source"] == next(
            volume["source"]
            for volume in services["classifier"]["volumes"]
            if volume["target"] == str(classifier.workdir)
        )
        assert [(port["host_ip"], int(port["target"])) for port in spec["ports"]] == [("127.0.0.1", web.http_port)]
    for objects in rendered.values():
        deployment = next(obj for obj in objects if obj["kind"] == "Deployment" and obj["metadata"]["name"] == "web")
        spec = pod_spec(deployment)
        container = spec["containers"][0]
        env = {variable["name"]: variable.get("value") for variable in container["env"]}
        volumes = {volume["name"]: volume for volume in spec["volumes"]}
        mount = next(
            m
            for m in container["volumeMounts"]
            if Path(env["PNEUMONIA_CLASSIFIER_KEY_FILE"]).parent == Path(m["mountPath"])
        )
        assert mount["readOnly"] is True and mount["subPath"] == "workdir"
        assert volumes[mount["name"]]["persistentVolumeClaim"]["claimName"] == "classifier-state"
        (affinity,) = spec["affinity"]["podAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
        assert affinity["labelSelector"]["matchLabels"] == {"app.kubernetes.io/name": "classifier"}
        for policy in (obj for obj in objects if obj["kind"] == "NetworkPolicy"):
            selector = policy["spec"]["podSelector"]
            names = selector.get("matchLabels", {}).get("app.kubernetes.io/name")
            names = [names] if names else [v for e in selector.get("matchExpressions", []) for v in e["values"]]
            assert "web" not in names or not policy["spec"].get("ingress"), policy["metadata"]["name"]


# ---------------------------------------------------------------------- the Open Inference Protocol runtime (KServe v2)

# Every key of a manifest object must be a field of kserve's own v1beta1 API models (kserve.models; Kubernetes'
# types from kubernetes.client.models): kubernetes-validate has no schema for KServe's CRD and only warns. Run in a
# subprocess: kserve's protobufs and tritonclient's (tests/test_classifier_oip.py) cannot share one process.
KSERVE_FIELDS_CHECK = r"""
import json, sys
import kserve.models as kserve_models
import kubernetes.client.models as k8s_models
PRIMITIVES = {"str": str, "int": int, "bool": bool, "float": (int, float), "object": object}
def check(value, type_name, path, problems):
    if type_name.startswith(("list[", "List[")):  # kserve's models say list[X], kubernetes' List[X]
        if not isinstance(value, list):
            problems.append(f"{path}: expected a list")
            return
        for i, item in enumerate(value):
            check(item, type_name[5:-1], f"{path}[{i}]", problems)
    elif type_name.startswith(("dict(", "Dict[")):
        if not isinstance(value, dict):
            problems.append(f"{path}: expected a mapping")
    elif type_name in PRIMITIVES:
        if not isinstance(value, PRIMITIVES[type_name]) or (type_name == "int" and isinstance(value, bool)):
            problems.append(f"{path}: expected {type_name}, got {value!r}")
    else:
        model = getattr(kserve_models, type_name, None) or getattr(k8s_models, type_name)
        if not isinstance(value, dict):
            problems.append(f"{path}: expected an object ({type_name})")
            return
        fields = {key: attribute for attribute, key in model.attribute_map.items()}
        for key, item in value.items():
            if key not in fields:
                problems.append(f"{path}.{key}: not a field of {type_name}")
            else:
                check(item, model.openapi_types[fields[key]], f"{path}.{key}", problems)
problems = []
check(json.load(sys.stdin), "V1beta1InferenceService", "InferenceService", problems)
print("\n".join(problems))
sys.exit(1 if problems else 0)
"""


def oip_variables() -> set[str]:
    from services.classifier.oip_models import OipConfig  # no kserve import (see KSERVE_FIELDS_CHECK)
    from shared.auth import AuthConfig

    return {field.alias for model in (OipConfig, AuthConfig) for field in model.model_fields.values() if field.alias}


def test_the_kserve_inference_service_is_valid_and_runs_the_oip_runtime() -> None:
    """k8s/overlays/kserve: the InferenceService's fields are KServe's, its container runs the v2 runtime with
    settings it accepts on the ports it declares, probes the open v2 health paths, reads /mnt/models (where KServe's
    storage initializer puts STORAGE_URI) and holds no storage credential; the overlay is the CPU one plus it."""
    from services.classifier.oip_models import OipConfig

    objects = k8s_objects(validate_deploy.render_kustomization(Path("overlays/kserve")))
    (service,) = [obj for obj in objects if obj["kind"] == "InferenceService"]
    result = subprocess.run(
        [sys.executable, "-c", KSERVE_FIELDS_CHECK],
        input=json.dumps(service),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    broken = copy.deepcopy(service)
    broken["spec"]["predictor"]["containers"][0]["readinesProbe"] = {}  # the check is real: a typo fails
    command = [sys.executable, "-c", KSERVE_FIELDS_CHECK]
    result = subprocess.run(command, input=json.dumps(broken), capture_output=True, text=True, timeout=300)
    assert result.returncode == 1 and "readinesProbe: not a field of V1Container" in result.stdout
    assert service["apiVersion"] == "serving.kserve.io/v1beta1"
    assert service["metadata"]["namespace"] == "pneumonia"
    predictor = service["spec"]["predictor"]
    (container,) = predictor["containers"]
    assert container["name"] == "kserve-container"
    assert container["image"] == f"pneumonia/classifier:{project_version()}-cpu"
    assert container["command"] == ["python", "-m", "services.classifier.oip"]
    assert module_runs("services.classifier.oip")
    env = {variable["name"]: variable.get("value") for variable in container["env"]}
    assert set(env) - {"STORAGE_URI"} <= oip_variables(), set(env) - oip_variables()
    assert env["STORAGE_URI"].startswith("s3://models/model-store/") and env["STORAGE_URI"].endswith(".mar")
    assert not {"PNEUMONIA_S3_ACCESS_KEY", "PNEUMONIA_S3_SECRET_KEY"} & set(env)
    config = OipConfig.from_env({name: value for name, value in env.items() if name.startswith("PNEUMONIA_OIP_")})
    assert config.model_dir == Path("/mnt/models") and config.host == "0.0.0.0"
    assert {port["name"]: port["containerPort"] for port in container["ports"]} == {
        "http1": config.http_port,
        "h2c": config.grpc_port,
    }
    assert container["readinessProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": config.http_port}
    assert container["livenessProbe"]["httpGet"] == {"path": "/v2/health/live", "port": config.http_port}
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert predictor["securityContext"]["runAsNonRoot"] is True
    (policy,) = [
        o for o in objects if o["kind"] == "NetworkPolicy" and o["metadata"]["name"] == "classifier-oip-inference"
    ]
    assert {port["port"] for port in policy["spec"]["ingress"][0]["ports"]} == {config.http_port, config.grpc_port}
    cpu = k8s_objects(validate_deploy.render_kustomization(Path("overlays/cpu")))
    names = {(obj["kind"], obj["metadata"]["name"]) for obj in objects}
    assert {(obj["kind"], obj["metadata"]["name"]) for obj in cpu} <= names


def test_compose_classifier_oip_reads_the_model_store_and_publishes_on_loopback(
    compose_models: dict[str, dict[str, Any]],
) -> None:
    """compose's classifier-oip: the classifier image, the v2 runtime with settings it accepts, TorchServe's model
    store mounted read-only, the callers' tokens, no storage credential, its ports on 127.0.0.1, a health check."""
    from services.classifier.oip_models import OipConfig

    for model in compose_models.values():
        services = model["services"]
        spec, env = services["classifier-oip"], services["classifier-oip"]["environment"]
        assert spec["image"] == services["classifier"]["image"]
        assert spec["command"] == ["python", "-m", "services.classifier.oip"]
        assert set(env) <= oip_variables(), set(env) - oip_variables()
        config = OipConfig.from_env({name: value for name, value in env.items() if name.startswith("PNEUMONIA_OIP_")})
        classifier = service_config("classifier", services["classifier"]["environment"])
        (mount,) = spec["volumes"]
        assert mount["target"] == str(config.model_dir) and mount["read_only"] is True
        store = next(v for v in services["classifier"]["volumes"] if v["target"] == str(classifier.model_store))
        assert mount["source"] == store["source"]
        assert env["PNEUMONIA_AUTH_TOKENS"] == services["generator"]["environment"]["PNEUMONIA_AUTH_TOKENS"]
        assert [(p["host_ip"], int(p["target"])) for p in spec["ports"]] == [
            ("127.0.0.1", config.http_port),
            ("127.0.0.1", config.grpc_port),
        ]
        assert spec["healthcheck"]["test"] == ["CMD", "python", "-m", "services.classifier.oip", "--health"]
        assert spec["read_only"] and spec["cap_drop"] == ["ALL"]
