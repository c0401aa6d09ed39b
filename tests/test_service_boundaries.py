"""Each service stands on its own: it imports only `shared`, the generated protos (`pneumonia`) and itself, and every
third-party module it needs (through `shared` too) is installed by its dependency extra plus the core.

The imports are read with `ast` from the source, all of them (inside functions too), so an import hidden in a
function to dodge a dependency still counts. Each service's image copies only its folder, `shared/` and the protos,
and installs the core and its extra (tests/test_deployment.py checks the Dockerfiles do).
"""

from __future__ import annotations

import ast
import importlib.metadata
import importlib.util
import json
import os
import re
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
SERVICES = sorted(path.parent.name for path in (ROOT / "services").glob("*/__init__.py"))
# Our own top-level packages: the code a service may import from is `shared`, `pneumonia` (proto/gen) and itself.
FIRST_PARTY = {"services", "shared", "pneumonia_proto", "pipeline", "bench", "scripts", "tests"}
PACKAGE_DIRS = {"shared": ROOT / "shared", "pneumonia_proto": ROOT / "proto" / "gen" / "pneumonia_proto"}
# The image that runs the `pneumonia` command (the drivers of the experiment and every step in-process): all of it.
PIPELINE_EXTRA = "pipeline"
# What a service's image runs beyond its folder: TorchServe loads the handler packed into each .mar.
RUNS_ALSO = {"classifier": [ROOT / "shared" / "serving" / "handler.py"]}
IMPORT_ERRORS = {"ImportError", "ModuleNotFoundError"}


@dataclass(frozen=True)
class Import:
    """One imported module, absolute, where it is imported, and whether an ImportError there is handled."""

    module: str
    path: Path
    line: int
    optional: bool

    def where(self, root: Path = ROOT) -> str:
        return f"{self.path.relative_to(root)}:{self.line}"


def module_name(path: Path, root: Path) -> str:
    """services/trainer/jobs.py -> services.trainer.jobs (a package's __init__.py -> the package)."""
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[:2] == ["proto", "gen"]:
        parts = parts[2:]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _handles_import_error(node: ast.Try) -> bool:
    names = set()
    for handler in node.handlers:
        caught = handler.type
        for expr in caught.elts if isinstance(caught, ast.Tuple) else [caught]:
            if isinstance(expr, ast.Name):
                names.add(expr.id)
    return bool(names & IMPORT_ERRORS)


def module_imports(path: Path, root: Path = ROOT) -> list[Import]:
    """Every module `path` imports, at any depth; `from X import y` counts as X and as X.y (y may be a module)."""
    name = module_name(path, root)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: list[Import] = []

    def visit(node: ast.AST, optional: bool) -> None:
        if isinstance(node, ast.Import):
            found.extend(Import(alias.name, path, node.lineno, optional) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            found.append(Import(module, path, node.lineno, optional))
            found.extend(Import(f"{module}.{alias.name}", path, node.lineno, optional) for alias in node.names)
        if isinstance(node, ast.Try):
            for child in node.body:
                visit(child, optional or _handles_import_error(node))
            for child in [*node.handlers, *node.orelse, *node.finalbody]:
                visit(child, optional)
            return
        for child in ast.iter_child_nodes(node):
            visit(child, optional)

    visit(ast.parse(path.read_text(), filename=str(path)), False)
    return found


def service_files(root: Path, service: str) -> list[Path]:
    return sorted((root / "services" / service).rglob("*.py"))


def service_runs(service: str) -> list[Path]:
    """The files a service's image runs: its folder, and what `RUNS_ALSO` names."""
    return service_files(ROOT, service) + RUNS_ALSO.get(service, [])


def boundary_violations(root: Path) -> list[str]:
    """'file:line imports P' for every import of our own code a service must not make: another service (or any
    other module of `services`), the drivers (`pipeline`), the benchmarks, scripts or tests."""
    services = sorted(path.parent.name for path in (root / "services").glob("*/__init__.py"))
    violations = []
    for service in services:
        for path in service_files(root, service):
            for imported in module_imports(path, root):
                parts = imported.module.split(".")
                if parts[0] == "services" and len(parts) > 1 and parts[1] != service:
                    violations.append(f"{imported.where(root)} imports services.{parts[1]}")
                elif parts[0] in FIRST_PARTY - {"services", "shared", "pneumonia_proto"}:
                    violations.append(f"{imported.where(root)} imports {parts[0]}")
    return sorted(set(violations))


def shared_violations(root: Path) -> list[str]:
    """`shared` is below every service: it imports none of them, nor the drivers."""
    return sorted(
        {
            f"{imported.where(root)} imports {imported.module.split('.')[0]}"
            for path in sorted((root / "shared").rglob("*.py"))
            for imported in module_imports(path, root)
            if imported.module.split(".")[0] in FIRST_PARTY - {"shared", "pneumonia_proto"}
        }
    )


# ---------------------------------------------------------------------------------------------------- dependencies


def normalized(distribution: str) -> str:
    return re.sub(r"[-_.]+", "-", distribution).lower()


def requirement_name(requirement: str) -> str:
    match = re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", requirement.strip())
    assert match, requirement
    return normalized(match.group(0))


def self_extras(requirement: str) -> list[str] | None:
    """The extras of a requirement on this project itself ('<name>[a,b]'), else None."""
    match = re.fullmatch(rf"{re.escape(PROJECT['name'])}\[([\w,\s-]+)\]", requirement.strip())
    return [extra.strip() for extra in match.group(1).split(",")] if match else None


def extra_names(extra: str) -> set[str]:
    """The distributions an extra installs beyond the core (the project's own extras it names included)."""
    names: set[str] = set()
    for requirement in PROJECT["optional-dependencies"][extra]:
        nested = self_extras(requirement)
        if nested is None:
            names.add(requirement_name(requirement))
        else:
            for other in nested:
                names |= extra_names(other)
    return names


CORE = {requirement_name(requirement) for requirement in PROJECT["dependencies"]}
DISTRIBUTIONS = importlib.metadata.packages_distributions()  # top-level module -> the distributions that ship it


def _source_files(module: str) -> list[Path]:
    """The files importing `module` runs, among `shared` and the protos: its parent packages and itself."""
    parts = module.split(".")
    base = PACKAGE_DIRS[parts[0]]
    files = []
    for depth in range(1, len(parts) + 1):
        directory = base.joinpath(*parts[1:depth])
        for candidate in (directory / "__init__.py", directory.with_suffix(".py")):
            if candidate.is_file():
                files.append(candidate)
    return files


def reachable(files: list[Path], optional_too: bool = False) -> tuple[set[Path], dict[str, Import]]:
    """(every file of ours that importing `files` runs, following imports into `shared` and the protos;
    top-level third-party module -> one place that imports it). Imports guarded by `except ImportError` are optional
    and left out, unless `optional_too`."""
    pending, seen = list(files), set(files)
    found: dict[str, Import] = {}
    while pending:
        path = pending.pop()
        for imported in module_imports(path):
            top = imported.module.split(".")[0]
            if (
                (imported.optional and not optional_too)
                or not top
                or top == "__future__"
                or top in sys.stdlib_module_names
            ):
                continue
            if top in PACKAGE_DIRS:
                for source in _source_files(imported.module):
                    if source not in seen:
                        seen.add(source)
                        pending.append(source)
            elif top not in FIRST_PARTY:
                found.setdefault(top, imported)
    return seen, found


def third_party_imports(files: list[Path], optional_too: bool = False) -> dict[str, Import]:
    """Top-level third-party module -> one place that imports it (see `reachable`)."""
    return reachable(files, optional_too)[1]


def missing_dependencies(files: list[Path], declared: set[str], optional_too: bool = False) -> list[str]:
    """'module (where): why' for each third-party module the files need that `declared` does not install."""
    problems = []
    for module, imported in sorted(third_party_imports(files, optional_too).items()):
        shipped_by = {normalized(name) for name in DISTRIBUTIONS.get(module, [])}
        if not shipped_by:
            problems.append(f"{module} ({imported.where()}): no installed distribution ships it")
        elif not shipped_by & declared:
            problems.append(f"{module} ({imported.where()}): from {sorted(shipped_by)}, not declared")
    return problems


# ---------------------------------------------------------------------------------------------------- the tests


def test_the_five_services_are_found() -> None:
    assert SERVICES == ["analyzer", "classifier", "generator", "trainer", "web"]


def test_services_import_only_shared_the_protos_and_themselves() -> None:
    violations = boundary_violations(ROOT)
    assert not violations, "a service imports another one's code (move it into shared/):\n" + "\n".join(violations)


def test_shared_imports_no_service() -> None:
    violations = shared_violations(ROOT)
    assert not violations, "\n".join(violations)


def test_the_scan_finds_every_kind_of_import(tmp_path: Path) -> None:
    """Planted violations: at module level, inside a function, relative, and `from services import x`."""
    files = {
        "services/__init__.py": "",
        "services/alpha/__init__.py": "",
        "services/alpha/ok.py": "from services.alpha import ok\nfrom shared.errors import ConfigError\nimport grpc\n",
        "services/alpha/top.py": "import services.beta.service\n",
        "services/alpha/inner.py": "def f():\n    from services.beta import jobs\n    return jobs\n",
        "services/alpha/relative.py": "from ..beta import service\nfrom . import ok\n",
        "services/alpha/package.py": "from services import beta\n",
        "services/alpha/driver.py": "try:\n    import pipeline.cli\nexcept ImportError:\n    pass\n",
        "services/beta/__init__.py": "",
        "shared/__init__.py": "",
        "shared/bad.py": "from services.alpha import ok\n",
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    assert boundary_violations(tmp_path) == [
        "services/alpha/driver.py:2 imports pipeline",
        "services/alpha/inner.py:2 imports services.beta",
        "services/alpha/package.py:1 imports services.beta",
        "services/alpha/relative.py:1 imports services.beta",
        "services/alpha/top.py:1 imports services.beta",
    ]
    assert shared_violations(tmp_path) == ["shared/bad.py:1 imports services"]


def test_the_dependency_scan_follows_shared_and_skips_optional_imports() -> None:
    found = third_party_imports(service_files(ROOT, "trainer"))
    assert "model_archiver" in found  # through shared.serving.archive
    assert "sklearn" in found  # through shared.metrics
    assert "medmnist" not in found  # shared.datasets.download: optional, inside `except ImportError`
    assert missing_dependencies(service_files(ROOT, "trainer"), set()) != []


@pytest.mark.parametrize("service", SERVICES)
def test_each_service_has_its_extra(service: str) -> None:
    assert service in PROJECT["optional-dependencies"], f"pyproject.toml has no extra `{service}`"


@pytest.mark.parametrize("service", SERVICES)
def test_a_service_needs_only_the_core_and_its_extra(service: str) -> None:
    problems = missing_dependencies(service_runs(service), CORE | extra_names(service))
    assert not problems, f"the `{service}` extra (or the core) lacks:\n" + "\n".join(problems)


def test_the_pipeline_image_has_everything_it_runs() -> None:
    """`pneumonia` runs every step in-process and drives the services: all our code, with the pipeline extra."""
    everything = [path for package in FIRST_PARTY - {"tests", "bench", "scripts"} for path in _package_files(package)]
    problems = missing_dependencies(everything, CORE | extra_names(PIPELINE_EXTRA))
    assert not problems, "the `pipeline` extra (or the core) lacks:\n" + "\n".join(problems)


def test_every_import_is_declared_optional_ones_too() -> None:
    """An import guarded by `except ImportError` (medmnist's download) is still code a user runs: the `pipeline`
    extra, which installs what `pneumonia` runs, declares it, so that the guard is for a partial install, never for
    ours."""
    everything = [path for package in FIRST_PARTY - {"tests", "bench", "scripts"} for path in _package_files(package)]
    problems = missing_dependencies(everything, CORE | extra_names(PIPELINE_EXTRA), optional_too=True)
    assert not problems, "the `pipeline` extra (or the core) lacks:\n" + "\n".join(problems)


def test_the_tests_benchmarks_and_scripts_import_only_what_dev_declares() -> None:
    """tests/, bench/, scripts/ and CI's S3 stand-in (docker/registry-free) run in `make install`'s environment: the
    dev extra declares what they import (packaging, boto3, ...), not the luck of a transitive dependency."""
    files = [path for folder in ("tests", "bench", "scripts") for path in _package_files(folder)]
    files += sorted((ROOT / "docker" / "registry-free").glob("*.py"))
    beside = {path.stem for path in files}  # tests import their helpers (storage_server, ...) from their own folder
    problems = [
        problem
        for problem in missing_dependencies(files, CORE | extra_names("dev"), optional_too=True)
        if problem.split(" ")[0] not in beside
    ]
    assert not problems, "the `dev` extra (or the core) lacks:\n" + "\n".join(problems)


def _package_files(package: str) -> Iterator[Path]:
    directory = PACKAGE_DIRS.get(package, ROOT / package)
    yield from sorted(directory.rglob("*.py")) if directory.is_dir() else ()


def test_dev_installs_every_extra() -> None:
    """`make install` (the dev extra) gives the tests every service's packages."""
    dev = extra_names("dev")
    for extra in [*SERVICES, PIPELINE_EXTRA]:
        assert extra_names(extra) <= dev, extra


def test_a_package_has_one_version_range_in_every_extra() -> None:
    """Extras (and the dependency groups: the build tools, the S3 stand-in's moto) repeat a package two services need;
    its range is the same everywhere (and never the core's too)."""
    ranges: dict[str, set[str]] = {}
    groups = tomllib.loads((ROOT / "pyproject.toml").read_text())["dependency-groups"]
    for requirements in [PROJECT["dependencies"], *PROJECT["optional-dependencies"].values(), *groups.values()]:
        for requirement in requirements:
            if self_extras(requirement) is None:
                ranges.setdefault(requirement_name(requirement), set()).add(requirement.strip())
    assert {name: specs for name, specs in ranges.items() if len(specs) > 1} == {}
    for extra, requirements in PROJECT["optional-dependencies"].items():
        named = {requirement_name(requirement) for requirement in requirements if self_extras(requirement) is None}
        assert not named & CORE, f"`{extra}` repeats core packages: {sorted(named & CORE)}"


def test_the_analyzer_carries_neither_torchserve_nor_kaggle() -> None:
    analyzer = CORE | extra_names("analyzer")
    assert not analyzer & {"torchserve", "torch-model-archiver", "kaggle"}, analyzer
    assert not CORE & {"torchserve", "torch-model-archiver", "kaggle", "pydicom", "grad-cam"}


# ---------------------------------------------------------------------------------------------------- what runs
# The scan above reads our own imports. What a third-party package imports in turn (TorchServe 0.12's worker imports
# yaml without declaring it) only shows when the code runs. So each image's modules are imported in a fresh
# interpreter whose site-packages holds only the distributions the image installs: its requirements (pyproject.toml,
# as the Dockerfiles install them) and everything those declare in their own metadata. An optional import falls back
# as it would in the image, and a missing one fails. No image is built.

# The third-party entry points an image runs beyond our code: TorchServe's Python worker loads the handler.
THIRD_PARTY_RUNS = {"classifier": ["ts.model_service_worker", "ts.model_loader", "ts.torch_handler.base_handler"]}
IMAGE_EXTRAS = {**{service: [service] for service in SERVICES}, "pipeline": [PIPELINE_EXTRA]}
OWN_DISTRIBUTION = normalized(PROJECT["name"])
# `import kaggle` authenticates at once and exits without credentials: placeholders (never sent anywhere) let it load.
KAGGLE_IMPORT_CREDENTIALS = {"KAGGLE_USERNAME": "import-check", "KAGGLE_KEY": "not-a-key"}

# Run in the fresh interpreter (-I -S: no site-packages of its own): the image's view of site-packages and our code
# on the path, then the imports.
IMPORT_ALL = """
import importlib, json, site, sys, traceback
site_packages, code, modules = sys.argv[1], json.loads(sys.argv[2]), json.loads(sys.argv[3])
site.addsitedir(site_packages)
sys.path[:0] = code
for module in modules:
    try:
        importlib.import_module(module)
    except ImportError:
        print(f"importing {module}:", traceback.format_exc(limit=-6), file=sys.stderr)
        sys.exit(1)
"""


def declared_closure(extras: list[str]) -> set[str]:
    """The distributions an image installs: the build requirements, the core and its extras, and every requirement
    those declare in their installed metadata (markers evaluated, extras followed)."""
    from packaging.requirements import Requirement

    build = tomllib.loads((ROOT / "pyproject.toml").read_text())["build-system"]["requires"]
    pending = [Requirement(text) for text in [*build, *PROJECT["dependencies"]]]
    pending += [Requirement(f"{OWN_DISTRIBUTION}[{','.join(extras)}]")]
    installed: set[str] = set()
    seen: set[tuple[str, frozenset[str]]] = set()
    while pending:
        requirement = pending.pop()
        name, wanted = normalized(requirement.name), frozenset(requirement.extras)
        if (name, wanted) in seen:
            continue
        seen.add((name, wanted))
        installed.add(name)
        if name == OWN_DISTRIBUTION:
            pending += [Requirement(text) for extra in wanted for text in PROJECT["optional-dependencies"][extra]]
            continue
        for text in importlib.metadata.requires(requirement.name) or []:
            nested = Requirement(text)
            if nested.marker is None or any(nested.marker.evaluate({"extra": extra}) for extra in {"", *wanted}):
                pending.append(nested)
    return installed


def image_modules(image: str) -> list[str]:
    """What an image's code runs: its files, every module of ours they import (at any depth, through `shared` and
    the protos), every third-party module they import (also inside functions), and the third-party entry points."""
    if image == "pipeline":
        files = [path for package in FIRST_PARTY - {"tests", "bench", "scripts"} for path in _package_files(package)]
    else:
        files = service_runs(image)
    ours, third_party = reachable(files)
    modules = {module_name(path, ROOT) for path in ours} | set(third_party)
    return sorted(modules | set(THIRD_PARTY_RUNS.get(image, [])))


def image_site_packages(declared: set[str], directory: Path) -> Path:
    """A site-packages that holds only the `declared` distributions: links to what each installed one ships (its
    top-level modules, .pth files and metadata), as the image's environment would hold them."""
    site_packages = directory / "site-packages"
    site_packages.mkdir(parents=True)
    for distribution in importlib.metadata.distributions():
        if normalized(distribution.metadata["Name"]) not in declared or not distribution.files:
            continue
        for file in distribution.files:
            top = file.parts[0]
            link = site_packages / top
            if top != ".." and not link.is_symlink():
                link.symlink_to(Path(distribution.locate_file(top)))
    return site_packages


def import_with_only(declared: set[str], modules: list[str], directory: Path) -> subprocess.CompletedProcess[str]:
    """Import `modules` in a fresh interpreter that sees only the `declared` distributions, the standard library
    and our code (the repository, not its editable install)."""
    site_packages = image_site_packages(declared - {OWN_DISTRIBUTION}, directory)
    code = json.dumps([str(ROOT), str(ROOT / "proto" / "gen")])
    return subprocess.run(
        [sys.executable, "-I", "-S", "-c", IMPORT_ALL, str(site_packages), code, json.dumps(modules)],
        capture_output=True,
        text=True,
        cwd=directory,
        timeout=600,
        env={**os.environ, **KAGGLE_IMPORT_CREDENTIALS},
    )


@pytest.mark.parametrize("image", [*SERVICES, "pipeline"])
def test_what_an_image_runs_imports_only_what_it_installs(image: str, tmp_path: Path) -> None:
    result = import_with_only(declared_closure(IMAGE_EXTRAS[image]), image_modules(image), tmp_path)
    assert result.returncode == 0, (
        f"the {image} image's requirements (pyproject.toml: the core and {IMAGE_EXTRAS[image]}, and what those "
        f"declare) do not install what its code imports when it runs:\n{result.stderr[-4000:]}"
    )


def test_the_runtime_import_check_finds_an_undeclared_dependency(tmp_path: Path) -> None:
    """TorchServe's worker imports yaml; without PyYAML declared by the classifier extra the check names it."""
    declared = declared_closure(["classifier"])
    assert {"pyyaml", "torchserve", "torch", "numpy"} <= declared and "kaggle" not in declared
    assert import_with_only(declared, THIRD_PARTY_RUNS["classifier"], tmp_path / "with").returncode == 0
    result = import_with_only(declared - {"pyyaml"}, THIRD_PARTY_RUNS["classifier"], tmp_path / "without")
    assert result.returncode == 1
    assert "No module named 'yaml'" in result.stderr
