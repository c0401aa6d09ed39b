"""The project's one lock (uv.lock) and the hashed requirement files every install reads (requirements/).

    python scripts/lock.py                     # after editing pyproject.toml: re-resolve what changed, keep the rest
    python scripts/lock.py --upgrade           # every package to the newest release pyproject.toml allows
    python scripts/lock.py --upgrade-package moto
    python scripts/lock.py --check             # offline: uv.lock agrees with pyproject.toml, requirements/ with uv.lock

uv resolves pyproject.toml into uv.lock (every platform and Python the project supports, a sha256 for every file).
From it this script exports, with `uv export`, one pip requirement file per install, every line pinned and hashed, so
that `pip install --require-hashes --no-deps -r FILE` installs exactly the locked files and nothing else:

    build.txt                pip, setuptools, wheel: installed first, so our package and any sdist build from the lock
    core.txt                 the core dependencies (torch's CUDA build from PyPI, which also runs on a CPU)
    core-without-torch.txt   the same less torch, torchvision and their CUDA libraries: for images with PyTorch's CPU
                             wheels (VARIANT=cpu), which come from PyTorch's own index, pinned by version only
    <extra>.txt              what each service's (and the pipeline's) extra adds on top of core.txt
    dev.txt                  everything `make install` installs: the core and every extra, the tests' tools
    s3-standin.txt           CI's S3 stand-in image (docker/registry-free/s3-standin.Dockerfile)
"""

from __future__ import annotations

import argparse
import difflib
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
REQUIREMENTS = ROOT / "requirements"
# PyTorch and what only its CUDA build needs: VARIANT=cpu images install PyTorch's CPU wheels in their place.
TORCH_AND_CUDA = re.compile(r"^(torch|torchvision|triton|nvidia-[a-z0-9-]+|cuda-[a-z0-9-]+)$")
EXPORT = ["export", "--frozen", "--format", "requirements-txt", "--no-emit-project", "--no-header", "--no-annotate"]
HEADER = "# {name}: {what}\n# Generated from uv.lock by `make lock` (scripts/lock.py); do not edit.\n"


def uv() -> str:
    """The uv that the dev extra installed beside this Python, else one on PATH."""
    beside = Path(sys.executable).parent / "uv"
    found = str(beside) if beside.is_file() else shutil.which("uv")
    if not found:
        raise SystemExit("uv is not installed: `make install` installs it (the dev extra), or `pip install uv`")
    return found


def run_uv(*args: str) -> str:
    result = subprocess.run([uv(), *args], cwd=ROOT, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"uv {' '.join(args)} failed:\n{result.stderr}")
    return result.stdout


def blocks(exported: str) -> dict[str, str]:
    """'name==version ; marker' -> its requirement block (that line and its --hash lines), as `uv export` wrote them.
    A package may appear once per Python version range (numpy 2.5 needs Python 3.12)."""
    return {block.partition(" \\")[0]: block for block in re.split(r"\n(?=\S)", exported.strip())}


def name_of(requirement: str) -> str:
    return re.split(r"[=;\s]", requirement, maxsplit=1)[0].lower()


def export(*selection: str) -> dict[str, str]:
    return blocks(run_uv(*EXPORT, "--no-default-groups", *selection))


def extras() -> list[str]:
    return list(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"])


def requirement_files() -> dict[str, str]:
    """File name -> its text, all exported from uv.lock as it is."""
    core = export()
    files = {
        "build.txt": ("installed first by every install: pip and the build backend", export("--only-group", "build")),
        "core.txt": ("the core dependencies, with torch's CUDA build (runs on a CPU too)", core),
        "core-without-torch.txt": (
            "the core less torch, torchvision and their CUDA libraries (VARIANT=cpu images install PyTorch's CPU "
            "wheels, pinned by version, first)",
            {line: block for line, block in core.items() if not TORCH_AND_CUDA.match(name_of(line))},
        ),
        "dev.txt": (
            "everything `make install` installs: the core, every extra and the tests' tools",
            export("--extra", "dev"),
        ),
        "s3-standin.txt": ("CI's S3 stand-in image (moto's server)", export("--only-group", "s3-standin")),
    }
    for extra in extras():
        if extra != "dev":
            added = {line: block for line, block in export("--extra", extra).items() if line not in core}
            files[f"{extra}.txt"] = (f"what the `{extra}` extra adds on top of core.txt", added)
    return {
        name: HEADER.format(name=name, what=what) + "".join(f"{block}\n" for _, block in sorted(pinned.items()))
        for name, (what, pinned) in files.items()
    }


def differences(expected: dict[str, str], directory: Path) -> list[str]:
    """What differs between the files `expected` and those in `directory` (missing, extra or changed)."""
    problems = []
    present = {path.name for path in directory.glob("*.txt")} if directory.is_dir() else set()
    for name in sorted(present - expected.keys()):
        problems.append(f"{name}: not exported from uv.lock any more")
    for name, text in sorted(expected.items()):
        path = directory / name
        if not path.is_file():
            problems.append(f"{name}: missing")
        elif path.read_text() != text:
            diff = difflib.unified_diff(path.read_text().splitlines(), text.splitlines(), name, "uv.lock", lineterm="")
            problems.append("\n".join(list(diff)[:20]))
    return problems


def check() -> list[str]:
    """Offline: uv.lock satisfies pyproject.toml, and requirements/ is what uv.lock exports."""
    with tempfile.TemporaryDirectory() as cache:  # an empty cache: nothing but the lock itself is read
        result = subprocess.run(
            [uv(), "lock", "--check", "--offline", "--cache-dir", cache], cwd=ROOT, capture_output=True, text=True
        )
    if result.returncode != 0:
        return [f"uv.lock does not satisfy pyproject.toml:\n{result.stderr.strip()}"]
    return differences(requirement_files(), REQUIREMENTS)


def write() -> None:
    REQUIREMENTS.mkdir(exist_ok=True)
    expected = requirement_files()
    for stale in set(path.name for path in REQUIREMENTS.glob("*.txt")) - expected.keys():
        (REQUIREMENTS / stale).unlink()
    for name, text in expected.items():
        (REQUIREMENTS / name).write_text(text)
    print(f"uv.lock and {len(expected)} files in requirements/ written; `make install` installs from them")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--check", action="store_true", help="offline: exit 1 where anything is out of date")
    mode.add_argument("--upgrade", action="store_true", help="every package to the newest allowed release")
    mode.add_argument("--upgrade-package", action="append", default=[], metavar="NAME", help="this one (repeatable)")
    args = parser.parse_args(argv)
    if args.check:
        problems = check()
        for problem in problems:
            print(problem, file=sys.stderr)
        if problems:
            print("the lock is out of date: run `make lock` and commit uv.lock and requirements/", file=sys.stderr)
        return 1 if problems else 0
    upgrade = ["--upgrade"] if args.upgrade else [arg for name in args.upgrade_package for arg in ("-P", name)]
    print(run_uv("lock", *upgrade) or "", end="")
    write()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
