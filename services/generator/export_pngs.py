"""Export a shard folder of synthetic images (`pneumonia generate-synthetic`'s default layout) as one PNG per image,
for browsing: `python -m services.generator.export_pngs SOURCE DESTINATION`.

DESTINATION gets the PNG layout: the files `--layout png` would have written (same names, same bytes) and a
per-image manifest.csv; every shard is checked against its sha256 first. Training reads either layout.
"""

from __future__ import annotations

import argparse
import sys

from shared.errors import PneumoniaError
from shared.synthetic import MANIFEST_NAME, export_pngs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", help="a synthetic folder in the shard layout")
    parser.add_argument("destination", help="where the PNGs and their manifest.csv go")
    args = parser.parse_args(argv)
    try:
        rows = export_pngs(args.source, args.destination)
    except PneumoniaError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"{len(rows)} PNG files and {MANIFEST_NAME} in {args.destination}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
