"""Compile the protos under proto/pneumonia_proto into Python packages under proto/gen (`make proto`).

    proto/pneumonia_proto/v1/*.proto          -> pneumonia_proto.v1          our services' contracts (proto package
                                                                            pneumonia.v1: the names on the wire)
    proto/pneumonia_proto/torchserve/*.proto  -> pneumonia_proto.torchserve  our copy of TorchServe's gRPC inference API

    python scripts/gen_proto.py              # regenerate proto/gen in place
    python scripts/gen_proto.py --out DIR    # write the packages under DIR instead (the staleness test)

The protos are compiled with `-I proto`, so generated modules import each other as `pneumonia_proto.v1.<name>_pb2`;
pyproject.toml maps the package `pneumonia_proto` to proto/gen/pneumonia_proto (named apart from the `pneumonia`
command). Output depends only on the protos and the grpcio-tools version, which pyproject.toml pins exactly, so the
committed stubs are byte-stable.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from importlib import resources
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "proto"
DEFAULT_OUT = PROTO_ROOT / "gen"
PACKAGE_DOCS = {
    Path("pneumonia_proto"): '"""Generated gRPC contracts of the pneumonia services (scripts/gen_proto.py)."""\n',
    Path("pneumonia_proto", "v1"): (
        '"""pneumonia.v1 messages and stubs, generated from proto/pneumonia_proto/v1 by scripts/gen_proto.py."""\n'
    ),
    Path("pneumonia_proto", "torchserve"): (
        '"""TorchServe\'s gRPC inference API, generated from proto/pneumonia_proto/torchserve by '
        'scripts/gen_proto.py."""\n'
    ),
}
PACKAGES = tuple(package for package in PACKAGE_DOCS if package != Path("pneumonia_proto"))


def generate(out_dir: Path) -> list[Path]:
    """Compile every .proto of each package in PACKAGES into `out_dir`; return the files written there."""
    protos = sorted(proto for package in PACKAGES for proto in (PROTO_ROOT / package).glob("*.proto"))
    if not protos:
        raise FileNotFoundError(f"no .proto files under {PROTO_ROOT / 'pneumonia_proto'}")
    for package in PACKAGES:
        package_dir = out_dir / package
        if package_dir.exists():
            shutil.rmtree(package_dir)  # a deleted .proto must not leave its stubs behind
        package_dir.mkdir(parents=True)
    well_known = resources.files("grpc_tools") / "_proto"  # google/protobuf/*.proto
    args = [
        "grpc_tools.protoc",
        f"-I{PROTO_ROOT}",
        f"-I{well_known}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        *(str(proto.relative_to(PROTO_ROOT)) for proto in protos),
    ]
    if protoc.main(args) != 0:
        raise RuntimeError(f"protoc failed on {', '.join(p.name for p in protos)}")
    for package, doc in PACKAGE_DOCS.items():
        (out_dir / package / "__init__.py").write_text(doc)
    return sorted(path for package in PACKAGES for path in (out_dir / package).iterdir())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="directory that receives pneumonia/")
    args = parser.parse_args(argv)
    written = generate(args.out.resolve())
    print(f"wrote {len(written)} files under {args.out / 'pneumonia_proto'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
