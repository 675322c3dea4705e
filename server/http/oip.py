"""Open Inference Protocol over HTTP/REST (``/v2``), with the binary tensor data extension.

A thin adapter like :mod:`oip_grpc`: JSON (and binary) tensors <-> ``oip_tensors``, calls into
``core.EmotionCore`` (protocol ``oip_http``), failures mapped by ``http_status`` to ``{"error": message}``
with the right status (400 bad tensor or audio, 404 unknown model, 429 + ``Retry-After`` when shedding,
503 when draining, 401 without a valid token).

Endpoints (``/versions/1`` may follow the model name everywhere):
``GET /v2/health/live``, ``GET /v2/health/ready``, ``GET /v2``, ``GET /v2/models/{name}``,
``GET /v2/models/{name}/ready``, ``GET /v2/models/{name}/config``, ``POST /v2/models/{name}/infer``,
``POST /v2/repository/index``.

Binary tensors (what ``tritonclient.http`` sends): the body is the JSON request followed by the raw
tensors; the ``Inference-Header-Content-Length`` header gives the JSON part's length, and each binary
input carries ``"parameters": {"binary_data_size": n}``. Outputs are binary when requested with
``"parameters": {"binary_data": true}`` or with the request parameter ``"binary_data_output": true``.
``BYTES`` inputs in JSON are UTF-8 strings, or base64 with the input parameter
``"content_type": "base64"`` (how to send an audio file in plain JSON).

Authentication: with tokens configured, every ``/v2`` call but the health and readiness probes needs
``Authorization: Bearer <token>``, like the gRPC port (whose health service is exempt too): the one check
of ``http/auth.py``.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np
from aiohttp import web

from emotion2vec_serving.clients.wire import PROTOCOL_OIP_HTTP
from emotion2vec_serving.server import tracing
from emotion2vec_serving.server.calls import oip_model
from emotion2vec_serving.server.calls import tensors as oip
from emotion2vec_serving.server.calls.core import EmotionCore
from emotion2vec_serving.server.calls.errors import (
    CallFailed,
    Failure,
    InvalidRequest,
    ModelNotFound,
)
from emotion2vec_serving.server.calls.types import CallContext, ModelCard
from emotion2vec_serving.server.http import jsonbody
from emotion2vec_serving.server.http.auth import HttpAuth
from emotion2vec_serving.server.http.status import http_error

__all__ = ["HEADER_LENGTH", "add_routes"]

#: The binary tensor extension's header: length of the JSON part of the body.
HEADER_LENGTH = "Inference-Header-Content-Length"
#: handler name -> the method name in metrics (that of the same call over OIP gRPC).
_RPC_NAMES = {"live": "ServerLive", "ready": "ServerReady", "server_metadata": "ServerMetadata",
              "model_metadata": "ModelMetadata", "model_ready": "ModelReady", "model_config": "ModelConfig",
              "infer": "ModelInfer", "repository_index": "RepositoryIndex"}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _json(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(text=json.dumps(body), status=status, headers=headers,
                        content_type="application/json")


def _failure(failure: Failure) -> web.Response:
    status, body, headers = http_error(failure)
    return _json(body, status, headers)


def _flatten(data: Any, shape: tuple[int, ...], count: int, name: str) -> list[Any]:
    """Row-major values of the JSON ``data``: flat (``count`` values) or nested exactly as ``shape``.

    Iterative, level by level, and held against the shape at each level, so the work is bounded by the
    data actually sent (a declared shape of 10**30 elements costs nothing) and no nesting depth can
    overflow the stack.
    """
    flat: list[Any] = data if isinstance(data, list) else [data]
    if not any(isinstance(v, list) for v in flat):
        if len(flat) != count:
            raise InvalidRequest(f"input {name}: shape {list(shape)} holds {count} element(s), "
                                 f"the data {len(flat)}")
        return flat
    level: list[Any] = [flat]
    for dim in shape:
        deeper: list[Any] = []
        for v in level:
            if not isinstance(v, list) or len(v) != dim:
                raise InvalidRequest(f"input {name}: \"data\" does not match shape {list(shape)}: send "
                                     f"{count} values flat, or nested as the shape")
            deeper.extend(v)
        level = deeper
    if any(isinstance(v, list) for v in level):
        raise InvalidRequest(f"input {name}: \"data\" is nested deeper than shape {list(shape)}")
    return level


def _bytes_values(name: str, values: list[Any], content_type: Any) -> list[bytes]:
    if content_type == "base64":
        try:
            return [base64.b64decode(str(v), validate=True) for v in values]
        except (binascii.Error, ValueError):
            raise InvalidRequest(f"input {name}: data is not valid base64") from None
    if content_type not in (None, "str", "string"):
        raise InvalidRequest(f"input {name}: unknown content_type {content_type!r} (use base64, or none)")
    out = []
    for v in values:
        if not isinstance(v, str):
            raise InvalidRequest(f"input {name}: BYTES data must be strings, got {type(v).__name__}")
        out.append(v.encode("utf-8"))
    return out


def _parse_body(body: bytes, header_length: str | None) -> tuple[dict[str, Any], memoryview]:
    """(the JSON request, the binary part after it)."""
    view = memoryview(body)
    if header_length is not None:
        try:
            n = int(header_length)
        except ValueError:
            raise InvalidRequest(f"{HEADER_LENGTH} must be an integer, got {header_length!r}") from None
        if not 0 <= n <= len(body):
            raise InvalidRequest(f"{HEADER_LENGTH} is {n} but the body has {len(body)} bytes")
        head, rest = view[:n], view[n:]
    else:
        head, rest = view, view[len(body):]
    doc = jsonbody.loads(head)
    if not isinstance(doc, dict):
        raise InvalidRequest("the request body must be a JSON object with an \"inputs\" list")
    return doc, rest


def _inputs(doc: dict[str, Any], binary: memoryview, max_items: int) -> list[oip.InTensor]:
    """The input tensors; each shape is checked (batch cap, data size) before its data is converted."""
    inputs = doc.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise InvalidRequest("the request needs a non-empty \"inputs\" list")
    out: list[oip.InTensor] = []
    offset = 0
    for i, t in enumerate(inputs):
        if not isinstance(t, dict):
            raise InvalidRequest(f"inputs[{i}] must be an object with name, shape, datatype and data")
        name, datatype, shape = t.get("name"), t.get("datatype"), t.get("shape")
        if not isinstance(name, str) or not isinstance(datatype, str):
            raise InvalidRequest(f"inputs[{i}] needs a string \"name\" and \"datatype\"")
        if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool)
                                                  for d in shape):
            raise InvalidRequest(f"input {name}: \"shape\" must be a list of integers")
        dims, count = oip.check_shape(name, shape, max_items)
        params = t.get("parameters") or {}
        if not isinstance(params, dict):
            raise InvalidRequest(f"input {name}: \"parameters\" must be an object")
        size = params.get("binary_data_size")
        if size is not None:
            if isinstance(size, bool) or not isinstance(size, int) or size < 0:
                raise InvalidRequest(f"input {name}: binary_data_size must be a non-negative integer")
            if offset + size > len(binary):
                raise InvalidRequest(f"input {name}: binary_data_size {size} runs past the end of the body "
                                     f"({len(binary) - offset} bytes left)")
            out.append(oip.from_raw(name, datatype, dims, bytes(binary[offset:offset + size]), max_items))
            offset += size
            continue
        if "data" not in t:
            raise InvalidRequest(f"input {name}: no \"data\" (and no binary_data_size)")
        values = _flatten(t["data"], dims, count, name)
        if datatype == "BYTES":
            values = _bytes_values(name, values, params.get("content_type"))
        out.append(oip.from_values(name, datatype, dims, values, max_items))
    if offset != len(binary):
        raise InvalidRequest(f"the body has {len(binary) - offset} byte(s) of binary data no input claims")
    return out


def _requested(doc: dict[str, Any]) -> tuple[list[str], dict[str, bool]]:
    """(requested output names, which of them are asked for as binary data)."""
    outputs = doc.get("outputs") or []
    if not isinstance(outputs, list):
        raise InvalidRequest("\"outputs\" must be a list")
    names: list[str] = []
    binary: dict[str, bool] = {}
    for i, o in enumerate(outputs):
        if not isinstance(o, dict) or not isinstance(o.get("name"), str):
            raise InvalidRequest(f"outputs[{i}] must be an object with a string \"name\"")
        names.append(o["name"])
        params = o.get("parameters") or {}
        if isinstance(params, dict) and "binary_data" in params:
            binary[o["name"]] = bool(params["binary_data"])
    return names, binary


def _output_json(t: oip.OutTensor) -> list[Any]:
    if t.datatype == "BYTES":
        return [v.decode("utf-8", errors="replace") for v in t.array.reshape(-1)]
    values: list[Any] = t.array.reshape(-1).tolist()
    return values


class _OipRest:
    def __init__(self, core: EmotionCore, auth: HttpAuth) -> None:
        self._core = core
        self._auth = auth
        self._version = oip_model.server_version()

    # ------------------------------------------------------------------ auth

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Bearer tokens on ``/v2`` (probes exempt); aiohttp's own errors there (unknown path, wrong
        method) as the protocol's JSON error object."""
        path = request.path
        if not (path == "/v2" or path.startswith("/v2/")):
            return await handler(request)
        handler_name = getattr(request.match_info.handler, "__name__", "")
        refused = self._auth.check(request, protocol=PROTOCOL_OIP_HTTP, rpc=_RPC_NAMES.get(handler_name))
        if refused is not None:
            return _failure(refused)
        try:
            return await handler(request)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            return _json({"error": f"{exc.reason}: {request.method} {path}"}, exc.status)

    # ------------------------------------------------------------------ helpers

    def _call(self, rpc: str, deadline: float | None = None, priority: int = 0,
              request: web.Request | None = None) -> CallContext:
        trace = None if request is None else tracing.incoming(lambda: request.headers)
        return CallContext(protocol=PROTOCOL_OIP_HTTP, rpc=rpc, deadline=deadline, priority=priority,
                           trace=trace)

    def _model(self, request: web.Request) -> ModelCard:
        card = self._core.model_card()
        oip_model.check_model(card, request.match_info["name"], request.match_info.get("version", ""))
        return card

    def _refuse(self, exc: BaseException, rpc: str) -> web.Response:
        return _failure(self._core.refuse(exc, self._call(rpc)))

    # ------------------------------------------------------------------ health and metadata

    async def live(self, request: web.Request) -> web.Response:
        return _json({"live": True})

    async def ready(self, request: web.Request) -> web.Response:
        ready = self._core.ready
        return _json({"ready": ready}, 200 if ready else 503)

    async def server_metadata(self, request: web.Request) -> web.Response:
        return _json(oip_model.server_metadata(self._version))

    async def model_metadata(self, request: web.Request) -> web.Response:
        try:
            card = self._model(request)
        except ModelNotFound as exc:
            return self._refuse(exc, "ModelMetadata")
        return _json(oip_model.model_metadata(card))

    async def model_ready(self, request: web.Request) -> web.Response:
        try:
            card = self._model(request)
        except ModelNotFound as exc:
            return self._refuse(exc, "ModelReady")
        ready = self._core.ready
        return _json({"name": card.name, "ready": ready}, 200 if ready else 503)

    async def model_config(self, request: web.Request) -> web.Response:
        try:
            card = self._model(request)
        except ModelNotFound as exc:
            return self._refuse(exc, "ModelConfig")
        return _json(oip_model.model_config(card))

    async def repository_index(self, request: web.Request) -> web.Response:
        card = self._core.model_card()
        state = "READY" if self._core.ready else "UNAVAILABLE"
        return _json([{"name": card.name, "version": oip_model.MODEL_VERSION, "state": state}])

    # ------------------------------------------------------------------ inference

    async def infer(self, request: web.Request) -> web.Response:
        try:
            card = self._model(request)
            try:
                body = await request.read()
            except web.HTTPRequestEntityTooLarge:
                failure = self._core.refuse(InvalidRequest(
                    "the request body is larger than the server accepts (--max-message-bytes)"
                ), self._call("ModelInfer"))
                status, error, headers = http_error(failure)
                return _json(error, 413 if status == 400 else status, headers)
            doc, binary = _parse_body(body, request.headers.get(HEADER_LENGTH))
            names, binary_outputs = _requested(doc)
            parameters = doc.get("parameters") or {}
            if not isinstance(parameters, dict):
                raise InvalidRequest("\"parameters\" must be an object")
            request_id = doc.get("id")
            if request_id is not None and not isinstance(request_id, str):
                raise InvalidRequest("\"id\" must be a string")
            max_items = self._core.max_request_items
            plan = oip.parse_infer(_inputs(doc, binary, max_items), names, parameters, card, max_items)
        except (InvalidRequest, ModelNotFound) as exc:
            return self._refuse(exc, "ModelInfer")
        call = self._call("ModelInfer", plan.deadline, plan.priority, request)
        try:
            results = await (self._core.recognize_many_split(plan.audios, plan.options, call) if plan.split
                             else self._core.recognize_many(plan.audios, plan.options, call))
        except CallFailed as failed:
            return _failure(failed.failure)
        all_binary = parameters.get("binary_data_output") is True
        outputs: list[dict[str, Any]] = []
        chunks: list[bytes] = []
        for t in oip.build_outputs(plan, results, card):
            entry: dict[str, Any] = {"name": t.name, "datatype": t.datatype, "shape": list(t.shape)}
            params: dict[str, Any] = dict(t.parameters)
            if binary_outputs.get(t.name, all_binary):
                raw = (oip.serialize_bytes(list(t.array.reshape(-1))) if t.datatype == "BYTES"
                       else np.ascontiguousarray(t.array, dtype="<f4").tobytes())
                params["binary_data_size"] = len(raw)
                chunks.append(raw)
            else:
                entry["data"] = _output_json(t)
            if params:
                entry["parameters"] = params
            outputs.append(entry)
        response: dict[str, Any] = {"model_name": card.name, "model_version": oip_model.MODEL_VERSION,
                                    "outputs": outputs}
        if "id" in doc:
            response["id"] = doc["id"]
        header = json.dumps(response).encode("utf-8")
        if not chunks:
            return web.Response(body=header, content_type="application/json")
        return web.Response(body=header + b"".join(chunks), content_type="application/octet-stream",
                            headers={HEADER_LENGTH: str(len(header))})


def add_routes(app: web.Application, core: EmotionCore, auth: HttpAuth) -> None:
    """Put the ``/v2`` endpoints (and their bearer-token check) on ``app`` before it starts."""
    rest = _OipRest(core, auth)
    app.middlewares.append(rest.middleware)
    r = app.router
    r.add_get("/v2/health/live", rest.live)
    r.add_get("/v2/health/ready", rest.ready)
    r.add_get("/v2", rest.server_metadata)
    r.add_post("/v2/repository/index", rest.repository_index)
    for base in ("/v2/models/{name}", "/v2/models/{name}/versions/{version}"):
        r.add_get(base, rest.model_metadata)
        r.add_get(base + "/ready", rest.model_ready)
        r.add_get(base + "/config", rest.model_config)
        r.add_post(base + "/infer", rest.infer)
