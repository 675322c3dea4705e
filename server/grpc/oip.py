"""Open Inference Protocol over gRPC: ``inference.GRPCInferenceService`` on the same port as ``emotion.v1``.

A thin adapter: wire tensors <-> ``oip_tensors`` (the model contract), calls into ``core.EmotionCore``
(limits, deadlines, admission, drain, metrics with protocol ``oip_grpc``), failures mapped by
``grpc_status``. Implemented: ServerLive, ServerReady, ModelReady, ServerMetadata, ModelMetadata,
ModelInfer, and the Triton extensions ``tritonclient`` uses in normal work: ModelConfig and
RepositoryIndex. Everything else (streaming infer, shared memory, repository load/unload, statistics,
trace and log settings) answers UNIMPLEMENTED.

The generated ``emotion.oip`` stubs declare the proto package ``inference`` like tritonclient's own, so a
process must never import both (duplicate symbols); only the server imports these.
"""

from __future__ import annotations

import time
from typing import Any, TypeAlias

import grpc
import numpy as np
from emotion.oip import grpc_service_pb2 as pb
from emotion.oip import grpc_service_pb2_grpc as pb_grpc
from emotion.oip import model_config_pb2
from google.protobuf import json_format

from emotion2vec_serving.clients.wire import PROTOCOL_OIP_GRPC
from emotion2vec_serving.server import tracing
from emotion2vec_serving.server.calls import oip_model
from emotion2vec_serving.server.calls import tensors as oip
from emotion2vec_serving.server.calls.core import EmotionCore
from emotion2vec_serving.server.calls.errors import CallFailed, InvalidRequest, ModelNotFound
from emotion2vec_serving.server.calls.types import CallContext, ModelCard
from emotion2vec_serving.server.grpc.status import abort

__all__ = ["SERVICE_NAME", "OipGrpcService", "add_to_server"]

SERVICE_NAME = "inference.GRPCInferenceService"

Context: TypeAlias = "grpc.aio.ServicerContext[Any, Any]"

# InferTensorContents field holding each datatype's typed values.
_CONTENTS_FIELD = {
    "BOOL": "bool_contents", "INT8": "int_contents", "INT16": "int_contents", "INT32": "int_contents",
    "INT64": "int64_contents", "UINT8": "uint_contents", "UINT16": "uint_contents",
    "UINT32": "uint_contents", "UINT64": "uint64_contents", "FP32": "fp32_contents",
    "FP64": "fp64_contents", "BYTES": "bytes_contents",
}  # fmt: skip


def _parameter_value(param: pb.InferParameter) -> Any:
    which = param.WhichOneof("parameter_choice")
    return None if which is None else getattr(param, which)


def _inputs(request: pb.ModelInferRequest, max_items: int) -> list[oip.InTensor]:
    """The input tensors; each shape is checked (batch cap, data size) before its data is copied."""
    raw = request.raw_input_contents
    if raw and len(raw) != len(request.inputs):
        raise InvalidRequest(f"raw_input_contents holds {len(raw)} tensor(s) for {len(request.inputs)} "
                             "input(s): send every input as raw contents, or none")
    out = []
    for i, t in enumerate(request.inputs):
        shape, count = oip.check_shape(t.name, t.shape, max_items)
        if raw:
            out.append(oip.from_raw(t.name, t.datatype, shape, raw[i], max_items))
            continue
        field = _CONTENTS_FIELD.get(t.datatype)
        if field is None:
            raise InvalidRequest(f"input {t.name}: datatype {t.datatype!r} cannot be sent as typed contents")
        contents = getattr(t.contents, field)
        if len(contents) != count:  # before the values are copied
            raise InvalidRequest(f"input {t.name}: shape {list(shape)} holds {count} element(s), "
                                 f"the contents {len(contents)}")
        out.append(oip.from_values(t.name, t.datatype, shape, list(contents), max_items))
    return out


def _as_infer_parameter(value: str | int | bool) -> pb.InferParameter:
    if isinstance(value, bool):
        return pb.InferParameter(bool_param=value)
    if isinstance(value, int):
        return pb.InferParameter(int64_param=value)
    return pb.InferParameter(string_param=value)


class OipGrpcService(pb_grpc.GRPCInferenceServiceServicer):  # type: ignore[misc]
    """The Open Inference Protocol's gRPC service over an ``EmotionCore``."""

    def __init__(self, core: EmotionCore) -> None:
        self._core = core
        self._version = oip_model.server_version()

    def _call(self, rpc: str, context: Context, priority: int = 0,
              deadline: float | None = None) -> CallContext:
        remaining = context.time_remaining()
        grpc_deadline = None if remaining is None else time.monotonic() + max(0.0, float(remaining))
        if deadline is None or (grpc_deadline is not None and grpc_deadline < deadline):
            deadline = grpc_deadline
        return CallContext(protocol=PROTOCOL_OIP_GRPC, rpc=rpc, deadline=deadline, priority=priority,
                           trace=tracing.incoming(context.invocation_metadata))

    async def _model(self, name: str, version: str, context: Context, rpc: str) -> ModelCard:
        card = self._core.model_card()
        try:
            oip_model.check_model(card, name, version)
        except ModelNotFound as exc:
            await abort(context, self._core.refuse(exc, self._call(rpc, context)))
        return card

    # ------------------------------------------------------------------ health and metadata

    async def ServerLive(self, request: pb.ServerLiveRequest, context: Context) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request: pb.ServerReadyRequest, context: Context) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=self._core.ready)

    async def ModelReady(self, request: pb.ModelReadyRequest, context: Context) -> pb.ModelReadyResponse:
        await self._model(request.name, request.version, context, "ModelReady")
        return pb.ModelReadyResponse(ready=self._core.ready)

    async def ServerMetadata(self, request: pb.ServerMetadataRequest,
                             context: Context) -> pb.ServerMetadataResponse:
        meta = oip_model.server_metadata(self._version)
        return pb.ServerMetadataResponse(name=meta["name"], version=meta["version"],
                                         extensions=meta["extensions"])

    async def ModelMetadata(self, request: pb.ModelMetadataRequest,
                            context: Context) -> pb.ModelMetadataResponse:
        card = await self._model(request.name, request.version, context, "ModelMetadata")
        meta = oip_model.model_metadata(card)

        def spec(t: dict[str, Any]) -> pb.ModelMetadataResponse.TensorMetadata:
            return pb.ModelMetadataResponse.TensorMetadata(name=t["name"], datatype=t["datatype"],
                                                           shape=t["shape"])

        return pb.ModelMetadataResponse(name=meta["name"], versions=meta["versions"],
                                        platform=meta["platform"], inputs=[spec(t) for t in meta["inputs"]],
                                        outputs=[spec(t) for t in meta["outputs"]])

    async def ModelConfig(self, request: pb.ModelConfigRequest, context: Context) -> pb.ModelConfigResponse:
        card = await self._model(request.name, request.version, context, "ModelConfig")
        config = json_format.ParseDict(oip_model.model_config(card), model_config_pb2.ModelConfig())
        return pb.ModelConfigResponse(config=config)

    async def RepositoryIndex(self, request: pb.RepositoryIndexRequest,
                              context: Context) -> pb.RepositoryIndexResponse:
        card = self._core.model_card()
        state = "READY" if self._core.ready else "UNAVAILABLE"
        return pb.RepositoryIndexResponse(
            models=[pb.RepositoryIndexResponse.ModelIndex(name=card.name, version=oip_model.MODEL_VERSION,
                                                          state=state)]
        )

    # ------------------------------------------------------------------ inference

    async def ModelInfer(self, request: pb.ModelInferRequest, context: Context) -> pb.ModelInferResponse:
        card = self._core.model_card()
        try:
            oip_model.check_model(card, request.model_name, request.model_version)
            parameters = {key: _parameter_value(p) for key, p in request.parameters.items()}
            max_items = self._core.max_request_items
            plan = oip.parse_infer(_inputs(request, max_items), [o.name for o in request.outputs], parameters,
                                   card, max_items)
        except (InvalidRequest, ModelNotFound) as exc:
            await abort(context, self._core.refuse(exc, self._call("ModelInfer", context)))
        call = self._call("ModelInfer", context, plan.priority, plan.deadline)
        try:
            results = await (self._core.recognize_many_split(plan.audios, plan.options, call) if plan.split
                             else self._core.recognize_many(plan.audios, plan.options, call))
        except CallFailed as failed:
            await abort(context, failed.failure)
        response = pb.ModelInferResponse(model_name=card.name, model_version=oip_model.MODEL_VERSION,
                                         id=request.id)
        for t in oip.build_outputs(plan, results, card):
            out = response.outputs.add(name=t.name, datatype=t.datatype, shape=list(t.shape))
            for key, value in t.parameters.items():
                out.parameters[key].CopyFrom(_as_infer_parameter(value))
            if t.datatype == "BYTES":
                response.raw_output_contents.append(oip.serialize_bytes(list(t.array.reshape(-1))))
            else:
                response.raw_output_contents.append(np.ascontiguousarray(t.array, dtype="<f4").tobytes())
        return response


def add_to_server(service: OipGrpcService, server: grpc.aio.Server) -> None:
    """Register ``inference.GRPCInferenceService`` on ``server``."""
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(service, server)
