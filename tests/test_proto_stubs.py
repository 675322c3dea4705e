"""The committed stubs are what grpc_tools generates from the committed .proto (no hand edits, no drift)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GENERATED = ("emotion_pb2.py", "emotion_pb2.pyi", "emotion_pb2_grpc.py")


def test_stubs_match_the_proto(tmp_path: Path) -> None:
    subprocess.run(
        [
            sys.executable, "-m", "grpc_tools.protoc", f"-I{ROOT / 'proto'}",
            f"--python_out={tmp_path}", f"--pyi_out={tmp_path}", f"--grpc_python_out={tmp_path}",
            str(ROOT / "proto/emotion/v1/emotion.proto"),
        ],
        check=True,
    )
    for name in GENERATED:
        fresh = (tmp_path / "emotion/v1" / name).read_text(encoding="utf-8")
        committed = (ROOT / "proto/emotion/v1" / name).read_text(encoding="utf-8")
        assert fresh == committed, f"proto/emotion/v1/{name} is stale: regenerate it (README, Development)"


def test_enum_zero_values_are_unspecified() -> None:
    from emotion.v1 import emotion_pb2

    for enum in emotion_pb2.DESCRIPTOR.enum_types_by_name.values():
        assert enum.values_by_number[0].name.endswith("_UNSPECIFIED"), enum.name
