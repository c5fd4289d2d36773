"""Open Inference Protocol messages over gRPC, shared by the unary ModelInfer (server/v2/grpc_service.py) and
Triton's stream (server/v2/stream.py): a request's inputs, parameters and requested outputs; a response's
output tensors in raw form."""

from __future__ import annotations

from protos.oip import open_inference_pb2 as oip
from server.errors import InvalidInput
from server.v2 import model as v2
from server.v2.tensors import CONTENTS_FIELD, Tensor, check_header, from_raw, from_values, to_raw


def parameter_value(p: oip.InferParameter):
    which = p.WhichOneof("parameter_choice")
    return None if which is None else getattr(p, which)


def request_parameters(request) -> dict:
    """A ModelInferRequest's parameters as plain values."""
    return {k: parameter_value(p) for k, p in request.parameters.items()}


def requested_outputs(request) -> list[tuple[str, int | None]]:
    """The outputs a request names, with their classification counts (v2.check_outputs)."""
    return v2.check_outputs([(o.name, parameter_value(o.parameters["classification"]))
                             if "classification" in o.parameters else (o.name, None) for o in request.outputs])


def infer_response(engine, request_id: str, out: list[Tensor], parameters: dict | None = None) -> oip.ModelInferResponse:
    """A ModelInferResponse of these output tensors, in raw form (as Triton answers); `parameters`: booleans."""
    response = oip.ModelInferResponse(
        model_name=engine.info.name, model_version=engine.info.version, id=request_id,
        outputs=[oip.ModelInferResponse.InferOutputTensor(name=t.name, datatype=t.datatype, shape=list(t.shape))
                 for t in out],
        raw_output_contents=[to_raw(t) for t in out])
    for key, value in (parameters or {}).items():
        response.parameters[key].bool_param = value
    return response


def request_inputs(request) -> list[Tensor]:
    """The input tensors of a ModelInferRequest, raw or typed, checked against their declared shapes."""
    raw = request.raw_input_contents
    if raw and len(raw) != len(request.inputs):
        raise InvalidInput(f"raw_input_contents has {len(raw)} entries for {len(request.inputs)} inputs; send one per input, in order")
    out = []
    for i, t in enumerate(request.inputs):
        name = t.name[:64]  # for messages: no valid input name is longer
        if raw:
            if t.HasField("contents"):
                raise InvalidInput(f"input '{name}' sets contents while raw_input_contents is used; use one form")
            out.append(from_raw(name, t.datatype, t.shape, raw[i]))
            continue
        check_header(name, t.datatype, t.shape)
        field = CONTENTS_FIELD.get(t.datatype)
        if field is None:
            raise InvalidInput(f"input '{name}' of type {t.datatype} can only be sent in raw_input_contents")
        out.append(from_values(name, t.datatype, t.shape, getattr(t.contents, field)))
    if not out:
        raise InvalidInput("request has no input tensor; send one of image, pixels, pixels_fp32, input")
    return out
