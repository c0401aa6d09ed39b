"""The `pneumonia` command: one subcommand per step of the experiment.

Each subcommand lives in the module that does the work and exposes `add_arguments(parser)` and `main(args)`;
the module's docstring is the subcommand's help.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from shared.errors import PneumoniaError

COMMANDS: dict[str, str] = {
    "download-dataset": "shared.datasets.download",
    "train-gan": "services.trainer.train_gan",
    "generate-synthetic": "services.generator.generate_synthetic",
    "train-classifier": "services.trainer.train_classifier",
    "evaluate": "services.trainer.evaluate",
    "analyze-results": "services.analyzer.analyze_results",
    "archive-classifier": "services.classifier.archive",
    "export": "shared.models.export",
    "experiment": "services.experiment",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pneumonia", description="GAN-enhanced pneumonia classification: data, GANs, classifiers, analysis."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, module_name in COMMANDS.items():
        module = importlib.import_module(module_name)
        doc = (module.__doc__ or "").strip()
        sub = subparsers.add_parser(
            name,
            help=doc.splitlines()[0] if doc else None,
            description=doc,
            formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        )
        module.add_arguments(sub)
        sub.set_defaults(handler=module.main, parser=sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
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
