"""The `pneumonia` command: one subcommand per step of the experiment.

Each subcommand lives in the module that does the work and exposes `add_arguments(parser)` and `main(args)`;
the module's docstring is the subcommand's description. The registry below names each module and its one-line
help, so `pneumonia --help` imports none of them and `pneumonia <command>` imports only that command's module
(an image holding only some services still runs the subcommands whose modules it has).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Iterable
from dataclasses import dataclass

from shared.errors import PneumoniaError


@dataclass(frozen=True)
class Command:
    """A subcommand: the module that implements it and its one-line help (the module docstring's first line)."""

    module: str
    help: str


COMMANDS: dict[str, Command] = {
    "download-dataset": Command(
        "shared.datasets.download",
        "Fetch a dataset into --data-dir: RSNA from Kaggle, PneumoniaMNIST from a local npz or MedMNIST, or phantom.",
    ),
    "train-gan": Command(
        "services.trainer.train_gan",
        "Train a DCGAN (or conditional DCGAN, or WGAN-GP) on the development images of a chest X-ray dataset.",
    ),
    "generate-synthetic": Command(
        "services.generator.generate_synthetic",
        "Generate labelled synthetic chest X-rays with a trained DCGAN generator.",
    ),
    "train-classifier": Command(
        "services.trainer.train_classifier",
        "Train the pneumonia classifier with one strategy and patient-level cross-validation.",
    ),
    "evaluate": Command(
        "services.trainer.evaluate",
        "Evaluate a saved classifier on a labelled split of a dataset and print its metrics.",
    ),
    "analyze-results": Command(
        "services.analyzer.analyze_results",
        "Compare the strategies and judge the synthetic images: did GAN augmentation help, and at what risk?",
    ),
    "archive-classifier": Command(
        "services.classifier.archive",
        "Pack a trained classifier checkpoint into a TorchServe model archive (.mar) with our handler.",
    ),
    "export": Command(
        "shared.models.export",
        "Portable classifier artifacts: TorchScript or ONNX, carrying the checkpoint's config (preprocessing, "
        "calibration).",
    ),
    "track": Command(
        "pipeline.track",
        "Log a finished experiment's work directory to MLflow and register each strategy's selected model.",
    ),
    "experiment": Command(
        "pipeline.experiment",
        "Run the whole experiment: GAN -> synthetic images -> four classifier strategies with CV -> analysis.",
    ),
}


def build_parser(load: Iterable[str] | None = None) -> argparse.ArgumentParser:
    """The `pneumonia` parser; the subcommands named in `load` (default: all) get their module's flags.

    A subcommand not loaded is listed with its help only; parsing it then fails, so load the one that runs.
    """
    loaded = set(COMMANDS if load is None else load)
    parser = argparse.ArgumentParser(
        prog="pneumonia", description="GAN-enhanced pneumonia classification: data, GANs, classifiers, analysis."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, command in COMMANDS.items():
        sub = subparsers.add_parser(name, help=command.help, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
        if name in loaded:
            module = importlib.import_module(command.module)
            sub.description = (module.__doc__ or "").strip() or command.help
            module.add_arguments(sub)
            sub.set_defaults(handler=module.main, parser=sub)
    return parser


def command_in(argv: list[str]) -> str | None:
    """The subcommand `argv` runs: its first word that is not an option of `pneumonia` itself."""
    words = [word for word in argv if word not in ("-v", "--verbose")]
    return words[0] if words and words[0] in COMMANDS else None


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    command = command_in(argv)
    parser = build_parser([command] if command else [])
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        return int(args.handler(args) or 0)
    except PneumoniaError as exc:
        print(f"pneumonia {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"pneumonia {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
