"""The `pneumonia` command's registry: its help needs no subcommand module, and a subcommand loads only its own."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.cli import COMMANDS, build_parser, command_in

ROOT = Path(__file__).resolve().parents[1]


def loaded_after(code: str) -> set[str]:
    """The modules of the subcommands (COMMANDS) imported by `code`, run in a fresh interpreter."""
    script = (
        f"import sys\nfrom pipeline.cli import COMMANDS\n{code}\n"
        "print('LOADED', *(c.module for c in COMMANDS.values() if c.module in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, env=os.environ, capture_output=True, text=True, check=True
    )
    return set(result.stdout.splitlines()[-1].split()[1:])


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_registry_help_is_the_first_line_of_the_module_docstring(name: str) -> None:
    command = COMMANDS[name]
    doc = importlib.import_module(command.module).__doc__ or ""
    assert doc.strip().splitlines()[0] == command.help


def test_help_imports_no_subcommand_module() -> None:
    code = "from pipeline.cli import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n    pass"
    assert loaded_after(code) == set()


def test_a_subcommand_imports_only_its_own_module() -> None:
    assert loaded_after("from pipeline.cli import build_parser\nbuild_parser(['experiment'])") == {
        "pipeline.experiment"
    }
    assert loaded_after("from pipeline.cli import build_parser\nbuild_parser(['download-dataset'])") == {
        "shared.datasets.download"
    }


def test_the_command_is_the_first_word_after_the_global_options() -> None:
    assert command_in(["-v", "train-gan", "--epochs", "1"]) == "train-gan"
    assert command_in(["--help"]) is None and command_in([]) is None and command_in(["nonsense"]) is None


def test_an_unknown_command_is_an_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        build_parser([]).parse_args(["nonsense"])
    assert exit_info.value.code == 2 and "invalid choice: 'nonsense'" in capsys.readouterr().err
