"""Fill in the secrets of .env (compose) or k8s/base/secrets.env (Kubernetes) with fresh random values.

    python scripts/make_secrets.py              # .env from .env.example           (make env)
    python scripts/make_secrets.py --k8s        # k8s/base/secrets.env from its example

The file is made from its example when missing; a secret that already has a value keeps it, so running it again
changes nothing. Every other line is copied as it is. The file is written with mode 0600.
"""

from __future__ import annotations

import argparse
import os
import secrets
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FILES = {  # (example, target)
    "compose": (ROOT / ".env.example", ROOT / ".env"),
    "k8s": (ROOT / "k8s" / "base" / "secrets.env.example", ROOT / "k8s" / "base" / "secrets.env"),
}


def fresh(name: str) -> str | None:
    """A new value for the variable `name`, or None when it is not a secret."""
    if name == "MINIO_ROOT_USER":
        return "pneumonia-root"
    if name == "MINIO_ROOT_PASSWORD" or name.endswith("_S3_SECRET_KEY"):
        return secrets.token_hex(20)  # MinIO takes 8 to 40 characters
    if name.endswith("_TOKEN"):
        return secrets.token_hex(32)  # shared.auth: 32 or more
    if name == "PNEUMONIA_AUTH_TOKENS":
        return f"operator={secrets.token_hex(32)}"
    return None


def variables(text: str) -> dict[str, str]:
    """{name: value} of the NAME=value lines of an env file (comments skipped)."""
    pairs = (line.partition("=") for line in text.splitlines() if not line.lstrip().startswith("#"))
    return {name.strip(): value for name, sep, value in pairs if sep}


def fill(example: Path, target: Path) -> list[str]:
    """Write `target`: `example`'s lines with `target`'s values where it has them, the empty secrets filled, and
    `target`'s other variables after them. The names filled in."""
    current = variables(target.read_text()) if target.exists() else {}
    lines, filled = [], []
    for line in example.read_text().splitlines():
        name, sep, value = line.partition("=")
        if sep and not line.startswith("#"):
            value = current.get(name, value)
            if not value and (new := fresh(name)) is not None:
                value = new
                filled.append(name)
            line = f"{name}={value}"
        lines.append(line)
    kept = [f"{name}={value}" for name, value in current.items() if name not in variables("\n".join(lines))]
    descriptor = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as out:
        out.write("\n".join(lines + kept) + "\n")
    os.chmod(target, 0o600)
    return filled


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--k8s", action="store_true", help="k8s/base/secrets.env instead of .env")
    args = parser.parse_args(argv)
    example, target = FILES["k8s" if args.k8s else "compose"]
    filled = fill(example, target)
    print(f"{target.relative_to(ROOT)}: {', '.join(filled) if filled else 'no secret was missing'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
