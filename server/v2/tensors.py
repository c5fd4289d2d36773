"""Open Inference Protocol tensors <-> numpy: data types, the raw (binary) form, typed gRPC contents and JSON.

Raw form (gRPC raw_*_contents, HTTP binary-tensor extension): elements flattened row-major, little-endian;
each BYTES element is preceded by its length as a 4-byte little-endian unsigned integer."""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass, field

import numpy as np

from server.errors import InvalidInput

DTYPES = {"BOOL": np.dtype(np.bool_), "UINT8": np.dtype("<u1"), "UINT16": np.dtype("<u2"), "UINT32": np.dtype("<u4"),
          "UINT64": np.dtype("<u8"), "INT8": np.dtype("<i1"), "INT16": np.dtype("<i2"), "INT32": np.dtype("<i4"),
          "INT64": np.dtype("<i8"), "FP16": np.dtype("<f2"), "FP32": np.dtype("<f4"), "FP64": np.dtype("<f8")}
BYTES = "BYTES"
# InferTensorContents field holding each data type (FP16/BF16 exist only in raw form).
CONTENTS_FIELD = {"BOOL": "bool_contents", "UINT8": "uint_contents", "UINT16": "uint_contents", "UINT32": "uint_contents",
                  "UINT64": "uint64_contents", "INT8": "int_contents", "INT16": "int_contents", "INT32": "int_contents",
                  "INT64": "int64_contents", "FP32": "fp32_contents", "FP64": "fp64_contents", BYTES: "bytes_contents"}
MAX_DIMS = 8
MAX_DIM = 2**31 - 1  # no real tensor is longer along one axis; numpy refuses some larger empty shapes outright


@dataclass
class Tensor:
    """A named tensor: `data` is a numpy array, or for BYTES a flat list of bytes (shape says how to read it)."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    data: np.ndarray | list[bytes]
    parameters: dict = field(default_factory=dict)

    @property
    def count(self) -> int:
        return math.prod(self.shape)  # Python integers: np.prod of int64 wraps around on huge shapes


def check_header(name: str, datatype: str, shape) -> tuple[int, ...]:
    """Validate a tensor's declared data type and shape; returns the shape as a tuple."""
    if datatype != BYTES and datatype not in DTYPES:
        raise InvalidInput(f"input '{name}' has unknown datatype {datatype[:16]!r}; valid: {', '.join([*DTYPES, BYTES])}")
    shape = tuple(int(d) for d in shape)
    if len(shape) > MAX_DIMS or any(d < 0 or d > MAX_DIM for d in shape):
        raise InvalidInput(f"input '{name}' has shape {list(shape)}: dimensions must be in [0, {MAX_DIM}], at most "
                           f"{MAX_DIMS} of them")
    return shape


def from_raw(name: str, datatype: str, shape, raw: bytes) -> Tensor:
    shape = check_header(name, datatype, shape)
    n = math.prod(shape)
    if datatype == BYTES:
        return Tensor(name, datatype, shape, split_bytes(name, raw, n))
    dt = DTYPES[datatype]
    if len(raw) != n * dt.itemsize:
        raise InvalidInput(f"input '{name}' has {len(raw)} bytes of data but {datatype} {list(shape)} needs {n * dt.itemsize}")
    return Tensor(name, datatype, shape, np.frombuffer(raw, dtype=dt).reshape(shape))


def from_values(name: str, datatype: str, shape, values) -> Tensor:
    """Typed values (gRPC contents, or the flattened JSON `data`) -> Tensor, the count checked."""
    shape = check_header(name, datatype, shape)
    n = math.prod(shape)
    if len(values) != n:
        raise InvalidInput(f"input '{name}' has {len(values)} elements but shape {list(shape)} needs {n}")
    if datatype == BYTES:
        return Tensor(name, datatype, shape, [v if isinstance(v, bytes) else str(v).encode() for v in values])
    # values: a list, an array, or protobuf's repeated field (converted straight, with no list in between)
    try:
        a = np.asarray(values, dtype=DTYPES[datatype])
    except (TypeError, ValueError, OverflowError) as e:
        raise InvalidInput(f"input '{name}' data is not all {datatype}: {e}") from e
    return Tensor(name, datatype, shape, a.reshape(shape))


def split_bytes(name: str, raw: bytes, n: int) -> list[bytes]:
    """Length-prefixed BYTES elements -> list; refuses a truncated or over-long buffer by name."""
    out, pos, view = [], 0, memoryview(raw)
    for i in range(n):
        if pos + 4 > len(raw):
            raise InvalidInput(f"input '{name}' BYTES data ends before element {i} of {n} (each element needs a "
                               f"4-byte little-endian length first)")
        (size,) = struct.unpack_from("<I", raw, pos)
        pos += 4
        if pos + size > len(raw):
            raise InvalidInput(f"input '{name}' BYTES element {i} declares {size} bytes but only {len(raw) - pos} remain")
        out.append(bytes(view[pos:pos + size]))
        pos += size
    if pos != len(raw):
        raise InvalidInput(f"input '{name}' has {len(raw) - pos} bytes of data after its {n} BYTES elements")
    return out


def to_raw(t: Tensor) -> bytes:
    if t.datatype == BYTES:
        return b"".join(struct.pack("<I", len(v)) + v for v in t.data)
    return np.ascontiguousarray(t.data, dtype=DTYPES[t.datatype]).tobytes()


def to_json_data(t: Tensor) -> list:
    """Flattened row-major values for a JSON body; BYTES as UTF-8 strings (what the protocol's JSON form holds)."""
    if t.datatype == BYTES:
        return [v.decode("utf-8", errors="replace") for v in t.data]
    return np.asarray(t.data).reshape(-1).tolist()
