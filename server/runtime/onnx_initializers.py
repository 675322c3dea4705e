"""Read an ONNX file's top-level initializers (the weights) as NumPy arrays, without the ``onnx`` package.

The serving install has no ``onnx`` (only the export extra does), and the runner needs the weights only to
hand one copy of them to several ONNX Runtime sessions (``engines/onnxruntime.py``, adaptive widths:
``server/runtime/widths.py``). An ONNX file is a protobuf ``ModelProto``; this walks its wire format just
far enough: ``ModelProto.graph`` (field 7) -> ``GraphProto.initializer`` (field 5) ->
``TensorProto`` ``dims`` (1), ``data_type`` (2), ``name`` (8), ``raw_data`` (9), ``data_location`` (14).
Only tensors stored inline as
``raw_data`` of a plain numeric type are returned (that is what the exporter writes); any other initializer
(typed repeated fields, external data, bfloat16, strings) is left to ONNX Runtime, which then loads its own
copy, as it always did. Subgraph initializers are left alone too.

The arrays are copies (aligned, owned, read-only), so the file's mapping is closed before this returns.
"""

from __future__ import annotations

import mmap
from pathlib import Path

import numpy as np
import numpy.typing as npt

__all__ = ["read_initializers"]

# ONNX TensorProto.DataType -> NumPy (little-endian, as ONNX's raw_data is).
_DTYPES: dict[int, str] = {1: "<f4", 2: "u1", 3: "i1", 4: "<u2", 5: "<i2", 6: "<i4", 7: "<i8", 9: "?",
                           10: "<f2", 11: "<f8", 12: "<u4", 13: "<u8"}
_MODEL_GRAPH, _GRAPH_INITIALIZER = 7, 5
_T_DIMS, _T_DATA_TYPE, _T_NAME, _T_RAW_DATA, _T_DATA_LOCATION = 1, 2, 8, 9, 14


def _varint(buf: memoryview, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7


def _fields(buf: memoryview, start: int, end: int) -> list[tuple[int, int, int, int]]:
    """(field, wire type, value or start, end) of each field between ``start`` and ``end``."""
    out = []
    pos = start
    while pos < end:
        key, pos = _varint(buf, pos)
        field, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(buf, pos)
            out.append((field, wire, value, pos))
        elif wire == 2:
            n, pos = _varint(buf, pos)
            out.append((field, wire, pos, pos + n))
            pos += n
        elif wire == 1:
            out.append((field, wire, pos, pos + 8))
            pos += 8
        elif wire == 5:
            out.append((field, wire, pos, pos + 4))
            pos += 4
        else:
            raise ValueError(f"unsupported protobuf wire type {wire} at byte {pos}")
    return out


def _tensor(buf: memoryview, start: int, end: int) -> tuple[str, npt.NDArray[np.generic]] | None:
    dims: list[int] = []
    name = ""
    dtype = 0
    raw: tuple[int, int] | None = None
    for field, wire, a, b in _fields(buf, start, end):
        if field == _T_DIMS:
            if wire == 0:
                dims.append(a)
            else:  # packed
                pos = a
                while pos < b:
                    value, pos = _varint(buf, pos)
                    dims.append(value)
        elif field == _T_DATA_TYPE and wire == 0:
            dtype = a
        elif field == _T_NAME and wire == 2:
            name = bytes(buf[a:b]).decode("utf-8")
        elif field == _T_RAW_DATA and wire == 2:
            raw = (a, b)
        elif field == _T_DATA_LOCATION and wire == 0 and a != 0:
            return None  # external data: ONNX Runtime loads it itself
    if not name or raw is None or dtype not in _DTYPES:
        return None
    np_dtype = np.dtype(_DTYPES[dtype])
    count = int(np.prod(dims, dtype=np.int64)) if dims else 1
    if count * np_dtype.itemsize != raw[1] - raw[0]:
        return None
    array = np.frombuffer(buf[raw[0]:raw[1]], dtype=np_dtype).reshape(dims).copy()  # own, aligned
    array.flags.writeable = False
    return name, array


def read_initializers(model_path: Path, min_bytes: int = 128) -> dict[str, npt.NDArray[np.generic]]:
    """The top-level initializers of ``model_path`` stored as ``raw_data``, of at least ``min_bytes``.

    ONNX Runtime takes a user-provided initializer only from 128 bytes on; smaller ones are not worth it.
    """
    out: dict[str, npt.NDArray[np.generic]] = {}
    with open(model_path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
        buf = memoryview(mapped)
        try:
            for field, wire, a, b in _fields(buf, 0, len(buf)):
                if field != _MODEL_GRAPH or wire != 2:
                    continue
                for gfield, gwire, ga, gb in _fields(buf, a, b):
                    if gfield != _GRAPH_INITIALIZER or gwire != 2:
                        continue
                    found = _tensor(buf, ga, gb)
                    if found is not None and found[1].nbytes >= min_bytes:
                        out[found[0]] = found[1]
        finally:
            buf.release()
    return out
