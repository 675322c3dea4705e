"""A small service that calls the generated gRPC stubs directly, the way another team would.

It needs only ``grpcio`` and the generated ``emotion.v1`` modules (copy them, or generate them from
``proto/emotion/v1/emotion.proto`` with ``grpc_tools.protoc``), not this project's client library.

Two modes:

    # one call: classify a file and print the result
    python examples/stub_client.py --target localhost:50051 once speech.wav

    # a tiny HTTP front end: POST audio bytes, get JSON back
    python examples/stub_client.py --target localhost:50051 serve --http-port 8080
    curl --data-binary @speech.wav localhost:8080/recognize
"""

from __future__ import annotations

import argparse
import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import grpc
from emotion.v1 import emotion_pb2, emotion_pb2_grpc

# Spread calls over every pod behind a headless Service (dns:///...); harmless for a single address.
SERVICE_CONFIG = json.dumps({"loadBalancingConfig": [{"round_robin": {}}]})


def make_stub(
    target: str, token: str | None
) -> tuple[emotion_pb2_grpc.EmotionRecognizerStub, list[tuple[str, str]]]:
    channel = grpc.insecure_channel(target, options=[("grpc.service_config", SERVICE_CONFIG)])
    metadata = [("authorization", f"Bearer {token}")] if token else []
    return emotion_pb2_grpc.EmotionRecognizerStub(channel), metadata


def recognize(
    stub: emotion_pb2_grpc.EmotionRecognizerStub, metadata: list[tuple[str, str]], audio: bytes
) -> dict[str, Any]:
    """One Recognize call with a 10 s deadline; the response flattened into plain JSON."""
    request = emotion_pb2.RecognizeRequest(
        audio=emotion_pb2.Audio(encoded=audio), granularity=emotion_pb2.GRANULARITY_UTTERANCE
    )
    response = stub.Recognize(request, timeout=10.0, metadata=metadata)
    return {
        "emotion": response.utterance.label,
        "confidence": response.utterance.confidence,
        "scores": {s.label: s.score for s in response.utterance.scores},
        "duration_s": response.duration_s,
        "model": response.model.name,
        "untrained": response.model.untrained,
        "server_ms": response.timing.total_ms,
    }


def serve(stub: emotion_pb2_grpc.EmotionRecognizerStub, metadata: list[tuple[str, str]], port: int) -> None:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            if self.path != "/recognize":
                self._reply(404, {"error": "POST audio to /recognize"})
                return
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            try:
                self._reply(200, recognize(stub, metadata, body))
            except grpc.RpcError as exc:
                # Map the gRPC status to an HTTP one; the server's message is passed through.
                status = {
                    grpc.StatusCode.INVALID_ARGUMENT: 400,
                    grpc.StatusCode.UNAUTHENTICATED: 401,
                    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
                    grpc.StatusCode.UNAVAILABLE: 503,
                    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
                }.get(exc.code(), 502)
                self._reply(status, {"error": exc.details(), "code": exc.code().name})

        def _reply(self, status: int, payload: dict[str, Any]) -> None:
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    print(f"listening on http://127.0.0.1:{server.server_address[1]}/recognize", flush=True)
    try:
        server.serve_forever()
    finally:
        server.server_close()


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--target", default="localhost:50051")
    parser.add_argument("--token", help="bearer token, when the server requires one")
    sub = parser.add_subparsers(dest="mode", required=True)
    once = sub.add_parser("once")
    once.add_argument("file", type=Path)
    srv = sub.add_parser("serve")
    srv.add_argument("--http-port", type=int, default=8080)
    args = parser.parse_args()

    stub, metadata = make_stub(args.target, args.token)
    if args.mode == "once":
        try:
            print(json.dumps(recognize(stub, metadata, args.file.read_bytes())))
        except grpc.RpcError as exc:
            print(f"{exc.code().name}: {exc.details()}", file=sys.stderr)
            return 1
        return 0
    serve(stub, metadata, args.http_port)
    return 0


if __name__ == "__main__":
    sys.exit(main())
