"""proto/emotion/oip/ is derived from the descriptors that the PyPI package tritonclient ships, by
scripts/proto_from_descriptor.py: compiled, it gives back exactly tritonclient's FileDescriptorProtos (only
the file names and the import path differ), and the script reproduces the committed files.

Our emotion.oip stubs and tritonclient's declare the same `inference.*` symbols, so this process imports
neither: tritonclient runs in a subprocess, and our side is compiled by protoc into a descriptor set."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from google.protobuf import descriptor_pb2

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "proto_from_descriptor.py"
# Our file, tritonclient's module, and the arguments that regenerate ours (the script's docstring).
OIP = {
    "emotion/oip/model_config.proto": ("tritonclient.grpc.model_config_pb2", []),
    "emotion/oip/grpc_service.proto": (
        "tritonclient.grpc.service_pb2",
        ["--rename-import", "model_config.proto=emotion/oip/model_config.proto"],
    ),
}
DUMP = """
import importlib, sys
from google.protobuf import descriptor_pb2
files = descriptor_pb2.FileDescriptorSet()
for name in sys.argv[1:]:
    files.file.add().ParseFromString(importlib.import_module(name).DESCRIPTOR.serialized_pb)
sys.stdout.buffer.write(files.SerializeToString())
"""


def _dump(modules: list[str]) -> list[descriptor_pb2.FileDescriptorProto]:
    """The FileDescriptorProtos that these *_pb2 modules carry, read in a fresh interpreter."""
    command = [sys.executable, "-c", DUMP, *modules]
    out = subprocess.run(command, check=True, capture_output=True, cwd=ROOT / "tests")
    return list(descriptor_pb2.FileDescriptorSet.FromString(out.stdout).file)


def _compile(include: Path, protos: list[str], tmp_path: Path) -> list[descriptor_pb2.FileDescriptorProto]:
    """protoc's FileDescriptorProtos for these files (the pinned grpcio-tools that also writes the stubs)."""
    out = tmp_path / "set.pb"
    subprocess.run([sys.executable, "-m", "grpc_tools.protoc", f"-I{include}", f"--descriptor_set_out={out}",
                    *(str(include / proto) for proto in protos)], check=True)
    return list(descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes()).file)


def _json_name_default(name: str) -> str:
    parts = name.split("_")
    return parts[0] + "".join(part[:1].upper() + part[1:] for part in parts[1:])


def _normalised(file: descriptor_pb2.FileDescriptorProto) -> descriptor_pb2.FileDescriptorProto:
    """The file with its name and imports as bare file names, and without the json_names protoc fills in by
    default (a descriptor set has them, a *_pb2 module's serialized descriptor does not); a json_name that
    differs from the default stays, so losing one is still caught."""
    file = descriptor_pb2.FileDescriptorProto.FromString(file.SerializeToString())
    file.name = Path(file.name).name
    file.dependency[:] = [Path(dependency).name for dependency in file.dependency]

    def strip(messages: list[descriptor_pb2.DescriptorProto]) -> None:
        for message in messages:
            for field in [*message.field, *message.extension]:
                if field.json_name == _json_name_default(field.name):
                    field.ClearField("json_name")
            strip(list(message.nested_type))

    strip(list(file.message_type))
    return file


@pytest.fixture(scope="module")
def tritonclient_files() -> dict[str, descriptor_pb2.FileDescriptorProto]:
    return {file.name: file for file in _dump([module for module, _ in OIP.values()])}


def test_our_definition_compiles_to_tritonclients_descriptors(
        tritonclient_files: dict[str, descriptor_pb2.FileDescriptorProto], tmp_path: Path) -> None:
    ours = {file.name: file for file in _compile(ROOT / "proto", list(OIP), tmp_path)}
    assert set(ours) == set(OIP)
    assert list(ours["emotion/oip/grpc_service.proto"].dependency) == ["emotion/oip/model_config.proto"]
    for name in OIP:
        mine, theirs = _normalised(ours[name]), _normalised(tritonclient_files[Path(name).name])
        assert mine.package == theirs.package == "inference"
        assert mine.syntax == theirs.syntax == "proto3"
        assert list(mine.dependency) == list(theirs.dependency), name
        assert list(mine.enum_type) == list(theirs.enum_type), name
        for message, expected in zip(mine.message_type, theirs.message_type, strict=True):
            assert message == expected, f"{name}: message {expected.name}"
        assert list(mine.service) == list(theirs.service), name
        assert mine == theirs, name  # and nothing else (options, ...) differs either


def test_the_script_regenerates_the_committed_files(tmp_path: Path) -> None:
    for proto, (module, extra) in OIP.items():
        out = tmp_path / Path(proto).name
        subprocess.run([sys.executable, str(SCRIPT), module, "--distribution", "tritonclient", *extra,
                        "-o", str(out)], check=True, cwd=ROOT)
        committed = (ROOT / "proto" / proto).read_text(encoding="utf-8")
        assert out.read_text(encoding="utf-8") == committed, f"proto/{proto} is not what the script writes"
        assert committed.startswith("// Copyright (c) 2020, NVIDIA CORPORATION. All rights reserved.\n")
        assert "PyPI package tritonclient" in committed


# What the OIP files do not use but the script claims to print: proto3 optional, map entries among nested
# messages, oneofs, reserved numbers and names, aliases, options, custom json_name, streaming, a nested type
# that shadows a top-level name, and a public import.
FEATURES = textwrap.dedent("""\
    syntax = "proto3";
    package demo.features;
    import public "dep.proto";
    option java_package = "org.example.demo";
    option optimize_for = SPEED;
    enum Color {
      option allow_alias = true;
      COLOR_UNSPECIFIED = 0;
      RED = 1;
      CRIMSON = 1 [deprecated = true];
      reserved 5, 7 to 9, 100 to max;
      reserved "BLUE";
    }
    message Shadow { int32 top = 1; }
    message Outer {
      option deprecated = true;
      message Shadow { string inner = 1; }
      map<string, Shadow> by_name = 1;
      message Later { .demo.features.Shadow top = 1; Shadow inner = 2; }
      map<int64, .demo.features.Shadow> by_id = 2;
      optional int32 maybe = 3;
      oneof choice { string text = 4 [json_name = "T"]; bytes blob = 5; Later later = 6; }
      repeated int32 packed_not = 7 [packed = false];
      Color color = 8;
      dep.Thing thing = 9;
      optional string also = 10;
      reserved 20, 22 to 25, 1000 to max;
      reserved "old", "older";
      enum Level { LEVEL_UNSPECIFIED = 0; HIGH = 1; }
      Level level = 11;
    }
    service Demo {
      rpc Unary(Outer) returns (Shadow);
      rpc Both(stream Outer.Later) returns (stream Outer.Shadow) { option deprecated = true; }
      rpc Client(stream dep.Thing) returns (Outer) {}
    }
    """)


def test_the_script_round_trips_other_proto3_features(tmp_path: Path) -> None:
    source, out = tmp_path / "source", tmp_path / "out"
    (source / "dep").mkdir(parents=True)
    (out / "dep").mkdir(parents=True)
    (source / "dep.proto").write_text('syntax = "proto3";\npackage dep;\nmessage Thing { int32 id = 1; }\n')
    (source / "features.proto").write_text(FEATURES)
    subprocess.run([sys.executable, "-m", "grpc_tools.protoc", f"-I{source}", f"--python_out={source}",
                    str(source / "features.proto"), str(source / "dep.proto")], check=True)
    printed = subprocess.run(
        [sys.executable, str(SCRIPT), "features_pb2", "--rename-import", "dep.proto=dep/dep.proto"],
        check=True, capture_output=True, text=True, cwd=source,
        env={**os.environ, "PYTHONPATH": str(source)},
    ).stdout
    assert 'import public "dep/dep.proto";' in printed
    (out / "features.proto").write_text(printed)
    (out / "dep" / "dep.proto").write_text((source / "dep.proto").read_text())
    (original,) = (f for f in _compile(source, ["features.proto"], tmp_path) if f.name == "features.proto")
    (again,) = (f for f in _compile(out, ["features.proto"], tmp_path) if f.name == "features.proto")
    assert _normalised(again) == _normalised(original), printed
    assert any(field.json_name == "T" for message in again.message_type for field in message.field)
