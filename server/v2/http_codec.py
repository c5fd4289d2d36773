"""The Open Inference Protocol's HTTP bodies: JSON, or a JSON header followed by binary tensors (the
binary-tensor extension tritonclient.http uses), in and out. Pure functions of bytes; server/v2/http.py
does the serving."""

from __future__ import annotations

import base64
import binascii
import json

import numpy as np
from aiohttp import web

from server.errors import InvalidInput
from server.shared_memory import PARAMETERS as SHM_PARAMETERS
from server.v2 import model as v2
from server.v2.tensors import BYTES, DTYPES, Tensor, check_header, from_raw, from_values, to_json_data, to_raw

HEADER_LENGTH = "Inference-Header-Content-Length"


def parse_request(body: bytes, headers, shm=None) -> tuple[dict, list[Tensor]]:
    doc, binary = parse_body(body, headers)
    return doc, parse_inputs(doc, binary, shm)


def parse_body(body: bytes, headers) -> tuple[dict, memoryview]:
    """(JSON header, the binary tensor data after it)."""
    size = headers.get(HEADER_LENGTH)
    if size is None:
        header, binary = body, b""
    else:
        if not size.isdigit() or int(size) > len(body):
            raise InvalidInput(f"{HEADER_LENGTH} is {size[:32]!r}; it must be the JSON header's length in bytes, at most "
                               f"the body's {len(body)}")
        header, binary = body[:int(size)], body[int(size):]
    try:
        doc = json.loads(header)
    except RecursionError as e:
        raise InvalidInput("request body is JSON nested too deeply to parse") from e
    except (ValueError, UnicodeDecodeError) as e:
        hint = f" (binary data without the {HEADER_LENGTH} header?)" if size is None else ""
        raise InvalidInput(f"request body is not valid JSON{hint}: {str(e)[:120]}") from e
    if not isinstance(doc, dict):
        raise InvalidInput("request body must be a JSON object with 'inputs'")
    return doc, memoryview(binary)


def parse_inputs(doc: dict, binary: memoryview, shm=None) -> list[Tensor]:
    """The inputs: JSON data, binary data after the header, or (`shm`: server/shared_memory.py) a registered
    shared memory region named by the input's parameters."""
    specs = doc.get("inputs")
    if not isinstance(specs, list) or not specs:
        raise InvalidInput("request needs 'inputs': a list with one tensor (image, pixels, pixels_fp32 or input)")
    out, pos = [], 0
    for spec in specs:
        if not isinstance(spec, dict) or not all(k in spec for k in ("name", "datatype", "shape")):
            raise InvalidInput("each input needs 'name', 'datatype' and 'shape'")
        name, datatype, shape = str(spec["name"])[:64], spec["datatype"], spec["shape"]
        if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) for d in shape):
            raise InvalidInput(f"input '{name}' shape must be a list of integers; got {str(shape)[:64]}")
        params = spec.get("parameters") or {}
        if not isinstance(params, dict):
            raise InvalidInput(f"input '{name}': 'parameters' must be a JSON object")
        shared = shm.read(name, params) if shm is not None and "shared_memory_region" in params else None
        if shared is not None:
            if "data" in spec or "binary_data_size" in params:
                raise InvalidInput(f"input '{name}' names a shared memory region and also carries data; use one form")
            out.append(from_raw(name, str(datatype), shape, shared))
            continue
        size = params.get("binary_data_size")
        if size is not None:
            if not isinstance(size, int) or size < 0 or pos + size > len(binary):
                raise InvalidInput(f"input '{name}' binary_data_size {size!r} runs past the {len(binary) - pos} "
                                   f"bytes of binary data left")
            out.append(from_raw(name, str(datatype), shape, bytes(binary[pos:pos + size])))
            pos += size
            continue
        if "data" not in spec:
            raise InvalidInput(f"input '{name}' has neither 'data' nor parameters.binary_data_size")
        check_header(name, str(datatype), shape)  # the declared tensor first, then its data
        out.append(from_values(name, str(datatype), shape, _flat_values(name, str(datatype), spec["data"], params)))
    if pos != len(binary):
        raise InvalidInput(f"{len(binary) - pos} bytes of binary data follow the JSON header that no input claims")
    return out


def _flat_values(name: str, datatype: str, data, params: dict) -> list:
    """JSON `data` (flat or nested, row-major) -> flat list; BYTES from strings (base64 when the input's
    parameters say content_type 'base64', as MLServer's codec does)."""
    if datatype != BYTES:
        if datatype not in DTYPES:
            return []  # check_header names the bad datatype
        return _numbers(name, datatype, data)
    flat, stack = [], [data]
    while stack:
        v = stack.pop()
        if isinstance(v, list):
            stack.extend(reversed(v))
        elif isinstance(v, str):
            flat.append(v)
        else:
            raise InvalidInput(f"input '{name}' BYTES data must be strings; got {type(v).__name__}")
    if params.get("content_type") == "base64":
        try:
            return [base64.b64decode(v, validate=True) for v in flat]
        except (binascii.Error, ValueError) as e:
            raise InvalidInput(f"input '{name}' is not valid base64: {e}") from e
    return [v.encode() for v in flat]


def _numbers(name: str, datatype: str, data) -> np.ndarray:
    """JSON numbers -> a flat array of `datatype`, refusing what a cast would silently change: fractions or
    booleans for an integer type (3.7 would become 3), values outside the type's range (300 would wrap to 44
    as UINT8; 1e40 would become inf as FP32), anything but true/false for BOOL."""
    target = DTYPES[datatype]
    bad = f"input '{name}' data is not a (nested) list of {datatype} values"
    try:
        a = np.asarray(data)
    except (TypeError, ValueError, OverflowError) as e:
        raise InvalidInput(f"{bad}: {str(e)[:100]}") from e
    if a.size == 0:
        return a.astype(target).reshape(-1)
    if a.dtype.kind not in "biuf":  # ragged lists, strings, integers beyond 64 bits
        raise InvalidInput(bad)
    if (target.kind == "b") != (a.dtype.kind == "b"):
        raise InvalidInput(f"{bad}: {'only' if target.kind == 'b' else 'no'} true/false")
    if target.kind in "iu":
        if a.dtype.kind == "f":
            raise InvalidInput(f"{bad}: {datatype} takes integers; got fractional numbers")
        info = np.iinfo(target)
        if a.size and (a.min() < info.min or a.max() > info.max):
            raise InvalidInput(f"{bad}: values outside [{info.min}, {info.max}]")
    if target.kind == "f" and a.size:
        finite = a[np.isfinite(a)]
        if finite.size and np.abs(finite).max() > np.finfo(target).max:
            raise InvalidInput(f"{bad}: values beyond {datatype}'s range")
    return a.astype(target).reshape(-1)


def parse_outputs(doc: dict, binary_all: bool) -> tuple[list[tuple[str, int | None]], set[str]]:
    specs = doc.get("outputs") or []
    if not isinstance(specs, list):
        raise InvalidInput("'outputs' must be a list of {\"name\": ...}")
    requested, binary = [], set()
    for spec in specs:
        if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
            raise InvalidInput("each requested output needs a 'name'")
        params = spec.get("parameters") or {}
        if not isinstance(params, dict):
            raise InvalidInput(f"output {spec['name'][:64]!r}: 'parameters' must be a JSON object")
        requested.append((spec["name"], params.get("classification")))
        if params.get("binary_data", binary_all):
            binary.add(spec["name"])
    checked = v2.check_outputs(requested)
    if not checked and binary_all:
        binary = set(v2.DEFAULT_OUTPUTS)
    return checked, binary


def output_targets(doc: dict, shm) -> dict:
    """Output name -> where its bytes go in shared memory, for the requested outputs whose parameters name a region
    (parse_outputs has checked the list's form)."""
    return {spec["name"]: shm.target(spec["name"][:64], spec["parameters"]) for spec in doc.get("outputs") or []
            if any(k in (spec.get("parameters") or {}) for k in SHM_PARAMETERS)}


def encode_response(engine, request_id, tensors: list[Tensor], binary_names: set[str], shared: dict | None = None) -> web.Response:
    doc = {"model_name": engine.info.name, "model_version": engine.info.version, "outputs": []}
    if request_id is not None:
        doc["id"] = str(request_id)
    blobs = []
    for t in tensors:
        entry = {"name": t.name, "datatype": t.datatype, "shape": list(t.shape)}
        if shared and t.name in shared:  # written to shared memory: no data here (the extension's rule)
            entry["parameters"] = shared[t.name]
        elif t.name in binary_names:
            raw = to_raw(t)
            entry["parameters"] = {"binary_data_size": len(raw)}
            blobs.append(raw)
        else:
            entry["data"] = to_json_data(t)
        doc["outputs"].append(entry)
    header = json.dumps(doc, separators=(",", ":")).encode()
    if not blobs:
        return web.Response(body=header, content_type="application/json")
    return web.Response(body=header + b"".join(blobs), content_type="application/octet-stream",
                        headers={HEADER_LENGTH: str(len(header))})

