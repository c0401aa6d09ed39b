"""The gRPC contracts: committed stubs match the protos, the services and methods exist, everything is commented."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from google.protobuf import descriptor_pb2
from grpc_tools import protoc
from pneumonia_proto.v1 import (
    analyzer_pb2,
    analyzer_pb2_grpc,
    generator_pb2,
    generator_pb2_grpc,
    trainer_pb2,
    trainer_pb2_grpc,
)

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "proto"
GENERATED = PROTO_ROOT / "gen" / "pneumonia_proto"


def package_files(root: Path) -> dict[str, bytes]:
    """Relative path -> bytes of every file under `root`, bytecode caches left out."""
    return {
        path.relative_to(root).as_posix(): path.read_bytes()
        for path in sorted(root.rglob("*"))
        if path.is_file() and "__pycache__" not in path.parts
    }


def test_committed_stubs_match_a_fresh_generation(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gen_proto.py"), "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    fresh, committed = package_files(tmp_path / "pneumonia_proto"), package_files(GENERATED)
    assert sorted(fresh) == sorted(committed), "proto/gen is stale: run `make proto`"
    stale = [name for name in fresh if fresh[name] != committed[name]]
    assert not stale, f"proto/gen is stale ({', '.join(stale)}): run `make proto`"
    assert {"common_pb2.py", "generator_pb2_grpc.py", "trainer_pb2.pyi"} <= {Path(name).name for name in fresh}


@pytest.mark.parametrize(
    ("module", "service", "methods"),
    [
        (generator_pb2, "GeneratorService", {"Generate": False, "GenerateStream": True}),
        (
            trainer_pb2,
            "TrainerService",
            {"StartGanJob": False, "StartClassifierJob": False, "GetJob": False, "WatchJob": True, "CancelJob": False},
        ),
        (analyzer_pb2, "AnalyzerService", {"Analyze": False}),
    ],
)
def test_services_have_their_methods(module: object, service: str, methods: dict[str, bool]) -> None:
    descriptor = module.DESCRIPTOR.services_by_name[service]
    assert descriptor.full_name == f"pneumonia.v1.{service}"
    found = {method.name: method.server_streaming for method in descriptor.methods}
    assert found == methods  # name -> whether the server streams its responses
    assert not any(method.client_streaming for method in descriptor.methods)


def test_stubs_and_servicers_are_importable_by_package_name() -> None:
    for grpc_module, service in [
        (generator_pb2_grpc, "GeneratorService"),
        (trainer_pb2_grpc, "TrainerService"),
        (analyzer_pb2_grpc, "AnalyzerService"),
    ]:
        assert hasattr(grpc_module, f"{service}Stub")
        assert hasattr(grpc_module, f"{service}Servicer")
        assert hasattr(grpc_module, f"add_{service}Servicer_to_server")
    request = generator_pb2.GenerateRequest(count=3, seed=7)
    assert generator_pb2.GenerateRequest.FromString(request.SerializeToString()) == request


def compiled_with_comments(tmp_path: Path) -> descriptor_pb2.FileDescriptorSet:
    """Our protos as descriptors with their source comments."""
    out = tmp_path / "descriptors.pb"
    protos = sorted(
        path.relative_to(PROTO_ROOT).as_posix() for path in (PROTO_ROOT / "pneumonia_proto/v1").glob("*.proto")
    )
    well_known = Path(protoc.__file__).parent / "_proto"
    args = ["protoc", f"-I{PROTO_ROOT}", f"-I{well_known}", "--include_source_info", f"--descriptor_set_out={out}"]
    assert protoc.main([*args, *protos]) == 0
    return descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())


# Field numbers in descriptor.proto, which source locations use as path elements.
FILE_MESSAGES, FILE_ENUMS, FILE_SERVICES = 4, 5, 6
MESSAGE_FIELDS, MESSAGE_NESTED, MESSAGE_ENUMS = 2, 3, 4
ENUM_VALUES = 2
SERVICE_METHODS = 2


def documented_elements(proto: descriptor_pb2.FileDescriptorProto) -> dict[tuple[int, ...], str]:
    """Source path -> element name of every message, field, enum, enum value, service and method."""
    elements: dict[tuple[int, ...], str] = {}
    for i, message in enumerate(proto.message_type):
        nested = [nested.name for nested in message.nested_type if not nested.options.map_entry]
        assert not nested and not message.enum_type, f"{message.name}: keep messages flat (maps are fine)"
        elements[(FILE_MESSAGES, i)] = message.name
        for j, field in enumerate(message.field):
            elements[(FILE_MESSAGES, i, MESSAGE_FIELDS, j)] = f"{message.name}.{field.name}"
    for i, enum in enumerate(proto.enum_type):
        elements[(FILE_ENUMS, i)] = enum.name
        for j, value in enumerate(enum.value):
            elements[(FILE_ENUMS, i, ENUM_VALUES, j)] = f"{enum.name}.{value.name}"
    for i, service in enumerate(proto.service):
        elements[(FILE_SERVICES, i)] = service.name
        for j, method in enumerate(service.method):
            elements[(FILE_SERVICES, i, SERVICE_METHODS, j)] = f"{service.name}.{method.name}"
    return elements


def test_every_message_field_and_method_is_commented(tmp_path: Path) -> None:
    protos = [proto for proto in compiled_with_comments(tmp_path).file if proto.package == "pneumonia.v1"]
    assert {proto.name for proto in protos} == {
        f"pneumonia_proto/v1/{name}.proto" for name in ("common", "generator", "trainer", "analyzer")
    }
    undocumented = []
    for proto in protos:
        comments = {
            tuple(location.path): location.leading_comments.strip() or location.trailing_comments.strip()
            for location in proto.source_code_info.location
        }
        undocumented += [name for path, name in documented_elements(proto).items() if not comments.get(path)]
    assert not undocumented, f"add a comment to: {', '.join(undocumented)}"


def test_messages_name_objects_not_file_paths(tmp_path: Path) -> None:
    path_like = [
        f"{message.name}.{field.name}"
        for proto in compiled_with_comments(tmp_path).file
        if proto.package == "pneumonia.v1"
        for message in proto.message_type
        for field in message.field
        if field.name.endswith(("path", "_dir", "file"))
    ]
    assert not path_like, f"messages carry ObjectRef/ObjectPrefix, not container paths: {path_like}"
