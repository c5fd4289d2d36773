"""Open Inference Protocol messages over gRPC, shared by the unary ModelInfer (server/v2/grpc_service.py) and
Triton's stream (server/v2/stream.py): a request's inputs, parameters and requested outputs; a response's
output tensors in raw form."""

from __future__ import annotations

from protos.oip import open_inference_pb2 as oip
from server.errors import InvalidInput
from server.shared_memory import PARAMETERS as SHM_PARAMETERS
from server.v2 import model as v2
from server.v2.tensors import CONTENTS_FIELD, Tensor, check_header, from_raw, from_values, to_raw


def parameter_value(p):
    """The value of a oneof `parameter_choice` (InferParameter, Triton's ModelRepositoryParameter and log
    SettingValue alike), or None when none is set."""
    which = p.WhichOneof("parameter_choice")
    return None if which is None else getattr(p, which)


def request_parameters(request) -> dict:
    """A message's `parameters` map as plain values (a ModelInferRequest's, a tensor's, a repository call's)."""
    return {k: parameter_value(p) for k, p in request.parameters.items()}


def requested_outputs(request) -> list[tuple[str, int | None]]:
    """The outputs a request names, with their classification counts (v2.check_outputs)."""
    return v2.check_outputs([(o.name, parameter_value(o.parameters["classification"]))
                             if "classification" in o.parameters else (o.name, None) for o in request.outputs])


def output_targets(request, shm) -> dict:
    """Output name -> where its bytes go in shared memory, for the outputs whose parameters name a region."""
    return {o.name: shm.target(o.name[:64], request_parameters(o)) for o in request.outputs
            if any(k in o.parameters for k in SHM_PARAMETERS)}


def infer_response(engine, request_id: str, out: list[Tensor], parameters: dict | None = None,
                   shared: dict | None = None) -> oip.ModelInferResponse:
    """A ModelInferResponse of these output tensors, in raw form (as Triton answers); `parameters`: booleans.
    `shared`: outputs already written to shared memory (name -> their parameters): their raw entry stays empty
    (tritonclient finds an output's raw bytes by its position) and they carry those parameters."""
    shared = shared or {}
    response = oip.ModelInferResponse(
        model_name=engine.info.name, model_version=engine.info.version, id=request_id,
        outputs=[oip.ModelInferResponse.InferOutputTensor(name=t.name, datatype=t.datatype, shape=list(t.shape))
                 for t in out],
        raw_output_contents=[b"" if t.name in shared else to_raw(t) for t in out])
    for tensor in response.outputs:
        for key, value in shared.get(tensor.name, {}).items():
            if isinstance(value, str):
                tensor.parameters[key].string_param = value
            else:
                tensor.parameters[key].int64_param = value
    for key, value in (parameters or {}).items():
        response.parameters[key].bool_param = value
    return response


def request_inputs(request, shm=None) -> list[Tensor]:
    """The input tensors of a ModelInferRequest, raw, typed or in a registered shared memory region (`shm`,
    server/shared_memory.py), checked against their declared shapes."""
    raw = request.raw_input_contents
    shared = [shm.read(t.name[:64], request_parameters(t)) if shm is not None and "shared_memory_region" in t.parameters
              else None for t in request.inputs]
    in_message = sum(b is None for b in shared)
    if raw and len(raw) != in_message:
        raise InvalidInput(f"raw_input_contents has {len(raw)} entries for {in_message} inputs not in shared memory; "
                           "send one per such input, in order")
    out, next_raw = [], 0
    for i, t in enumerate(request.inputs):
        name = t.name[:64]  # for messages: no valid input name is longer
        if shared[i] is not None or raw:
            if t.HasField("contents"):
                form = "shared memory" if shared[i] is not None else "raw_input_contents"
                raise InvalidInput(f"input '{name}' sets contents while {form} is used; use one form")
            if shared[i] is None:
                next_raw += 1
            out.append(from_raw(name, t.datatype, t.shape, shared[i] if shared[i] is not None else raw[next_raw - 1]))
            continue
        check_header(name, t.datatype, t.shape)
        field = CONTENTS_FIELD.get(t.datatype)
        if field is None:
            raise InvalidInput(f"input '{name}' of type {t.datatype} can only be sent in raw_input_contents")
        out.append(from_values(name, t.datatype, t.shape, getattr(t.contents, field)))
    if not out:
        raise InvalidInput("request has no input tensor; send one of image, pixels, pixels_fp32, input")
    return out
