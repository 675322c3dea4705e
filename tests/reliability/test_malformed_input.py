"""Malformed input gets 400 / INVALID_ARGUMENT with a clear message, never 500 / UNKNOWN and a traceback
(issue 22, defect 2), from a real server process on the tiny model.

- HTTP: a multipart body with no or the wrong boundary, an unterminated part or a bad part header, on
  ``/v1/recognize`` and ``/v1/embed``; ``Content-Encoding: gzip`` on a body that is not gzip, on
  ``/v1/recognize`` and the OIP ``/v2/models/<m>/infer``; a ``smoothing`` beyond any whole number a frame
  count can hold.
- gRPC: request bytes that are not a valid protobuf, sent with an identity serializer to every unary
  emotion.v1 method, to ``StreamRecognize`` (first message, and after a valid config) and to OIP methods;
  an unknown ``granularity`` (99).
- The log: a server that received every one of these, then stopped, logged no traceback and no ERROR line.
"""

from __future__ import annotations

import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from emotion.v1 import emotion_pb2 as pb
from emotion.v1 import emotion_pb2_grpc

from emotion2vec_serving.modelrepo.manifest import load_manifest
from emotion2vec_serving.server.process import ServerProcess
from tests.support.audio import encoded_signal
from tests.support.servers import server_process

WAV = encoded_signal("wav", duration_s=1.0, rate=16000, channels=1)
BOUNDARY = "b0undary"
FORM = f"multipart/form-data; boundary={BOUNDARY}"
#: A well-formed form with the WAV as its file part; the cases below break one thing in it.
GOOD_FORM = (
    f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n'
    "Content-Type: audio/wav\r\n\r\n"
).encode() + WAV + f"\r\n--{BOUNDARY}--\r\n".encode()
NOT_PROTOBUF = b"\xff\xff\xff\xff\xff"  # field 0 / wire type 7: no protobuf message parses this


@dataclass(frozen=True)
class HttpCase:
    path: str  # "{model}" is replaced by the served model's name
    body: bytes
    headers: dict[str, str]
    message: str  # must appear in the JSON error


HTTP_CASES = {
    "multipart-no-boundary": HttpCase("/v1/recognize", GOOD_FORM, {"Content-Type": "multipart/form-data"},
                                      "boundary missed"),
    "multipart-wrong-boundary": HttpCase("/v1/recognize", GOOD_FORM,
                                         {"Content-Type": "multipart/form-data; boundary=other"},
                                         "Could not find starting boundary"),
    "multipart-unterminated-part": HttpCase("/v1/recognize", GOOD_FORM[:300], {"Content-Type": FORM},
                                            "the body ended before the closing boundary"),
    "multipart-bad-part-header": HttpCase(
        "/v1/recognize",
        f"--{BOUNDARY}\r\nContent-Disposition form-data name=file\r\n\r\nabc\r\n--{BOUNDARY}--\r\n".encode(),
        {"Content-Type": FORM}, "Invalid HTTP header"),
    "embed-multipart-no-boundary": HttpCase("/v1/embed", GOOD_FORM, {"Content-Type": "multipart/form-data"},
                                            "boundary missed"),
    "v1-gzip-not-gzip": HttpCase("/v1/recognize", b"this is not gzip",
                                 {"Content-Type": "audio/wav", "Content-Encoding": "gzip"},
                                 "content-encoding: gzip"),
    "v1-multipart-gzip-not-gzip": HttpCase("/v1/recognize", GOOD_FORM,
                                           {"Content-Type": FORM, "Content-Encoding": "gzip"},
                                           "content-encoding: gzip"),
    "v2-gzip-not-gzip": HttpCase("/v2/models/{model}/infer", b"this is not gzip",
                                 {"Content-Type": "application/json", "Content-Encoding": "gzip"},
                                 "content-encoding: gzip"),
    "v1-smoothing-overflow": HttpCase("/v1/recognize?granularity=frame&smoothing=" + "9" * 30, WAV,
                                      {"Content-Type": "audio/wav"}, "smoothing must be at most"),
}

#: (method, how it is called, the message type named in the answer).
GRPC_CASES = {
    "Recognize": ("/emotion.v1.EmotionRecognizer/Recognize", "unary", "emotion.v1.RecognizeRequest"),
    "Embed": ("/emotion.v1.EmotionRecognizer/Embed", "unary", "emotion.v1.EmbedRequest"),
    "GetModelInfo": ("/emotion.v1.EmotionRecognizer/GetModelInfo", "unary", "emotion.v1.GetModelInfoRequest"),
    "StreamRecognize-first": ("/emotion.v1.EmotionRecognizer/StreamRecognize", "stream",
                              "emotion.v1.StreamRecognizeRequest"),
    "StreamRecognize-after-config": ("/emotion.v1.EmotionRecognizer/StreamRecognize", "stream-after-config",
                                     "emotion.v1.StreamRecognizeRequest"),
    "oip-ModelInfer": ("/inference.GRPCInferenceService/ModelInfer", "unary", "inference.ModelInferRequest"),
    "oip-ModelMetadata": ("/inference.GRPCInferenceService/ModelMetadata", "unary",
                          "inference.ModelMetadataRequest"),
    "oip-ServerLive": ("/inference.GRPCInferenceService/ServerLive", "unary", "inference.ServerLiveRequest"),
}


@pytest.fixture(scope="module")
def model_name(tiny_repo: Path) -> str:
    return load_manifest(tiny_repo).model_name


@pytest.fixture(scope="module")
def server(tiny_repo: Path) -> Iterator[ServerProcess]:
    with server_process(tiny_repo) as proc:
        yield proc


def post(server: ServerProcess, case: HttpCase, model: str) -> tuple[int, str]:
    url = server.http_url + case.path.replace("{model}", model)
    request = urllib.request.Request(url, data=case.body, headers=case.headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return int(response.status), response.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read().decode("utf-8", "replace")


def call_raw(channel: grpc.Channel, method: str, how: str) -> grpc.RpcError | None:
    """``NOT_PROTOBUF`` as the request bytes (identity serializer); the error, or None if the call passed."""
    try:
        if how == "unary":
            channel.unary_unary(method)(NOT_PROTOBUF, timeout=30)
        else:
            first = [] if how == "stream" else [
                pb.StreamRecognizeRequest(config=pb.StreamConfig(
                    encoding=pb.PCM_ENCODING_S16LE, sample_rate_hz=16000)).SerializeToString()]
            list(channel.stream_stream(method)(iter([*first, NOT_PROTOBUF]), timeout=30))
    except grpc.RpcError as exc:
        return exc
    return None


def recognize_granularity_99(channel: grpc.Channel) -> grpc.RpcError | None:
    stub = emotion_pb2_grpc.EmotionRecognizerStub(channel)
    try:
        stub.Recognize(pb.RecognizeRequest(audio=pb.Audio(encoded=WAV), granularity=99), timeout=30)  # type: ignore[arg-type]
    except grpc.RpcError as exc:
        return exc
    return None


@pytest.mark.parametrize("case", list(HTTP_CASES.values()), ids=list(HTTP_CASES))
def test_malformed_http_body_is_400_with_a_clear_message(
        server: ServerProcess, model_name: str, case: HttpCase) -> None:
    status, body = post(server, case, model_name)
    assert status == 400, body
    assert case.message.lower() in body.lower(), body
    assert body.startswith('{"error": '), body  # the JSON error object of both APIs, not aiohttp's text


@pytest.mark.parametrize(("method", "how", "type_name"), list(GRPC_CASES.values()), ids=list(GRPC_CASES))
def test_request_bytes_that_are_not_protobuf_are_invalid_argument(
        server: ServerProcess, method: str, how: str, type_name: str) -> None:
    with grpc.insecure_channel(server.target) as channel:
        error = call_raw(channel, method, how)
    assert error is not None, "the call passed"
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
    assert f"not a valid {type_name} protobuf message" in (error.details() or "")


def test_unknown_granularity_is_refused(server: ServerProcess) -> None:
    with grpc.insecure_channel(server.target) as channel:
        error = recognize_granularity_99(channel)
    assert error is not None, "granularity 99 was served as if it were UTTERANCE"
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "unknown granularity 99" in (error.details() or "")


def test_malformed_input_is_logged_without_traceback_or_error(tiny_repo: Path, model_name: str) -> None:
    """Every case above against a fresh server, which is then stopped (its log complete): no ERROR line
    and no traceback, and the HTTP body errors left one line each."""
    # Plus JSON nested 5,000 deep: /v1 takes audio, not JSON (the /v2 body is another part of issue 22).
    deep_json = HttpCase("/v1/recognize", b"[" * 5000 + b"]" * 5000, {"Content-Type": "application/json"}, "")
    server = server_process(tiny_repo).start()
    try:
        for case in [*HTTP_CASES.values(), deep_json]:
            post(server, case, model_name)
        with grpc.insecure_channel(server.target) as channel:
            for method, how, _ in GRPC_CASES.values():
                call_raw(channel, method, how)
            recognize_granularity_99(channel)
    finally:
        assert server.terminate() == 0
    log = server.log_text()
    server.log_path.unlink(missing_ok=True)
    assert "stopped" in log
    errors = [line for line in log.splitlines() if " ERROR " in line or " CRITICAL " in line]
    assert not errors, "\n".join(errors)
    assert "Traceback" not in log, log[log.index("Traceback") - 300:][:3000]
