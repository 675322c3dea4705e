"""The OpenAPI 3 description of the web API (``GET /openapi.json``), hand-written; tests check it against
the server."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from emotion2vec_serving.clients.schema import GRANULARITIES
from emotion2vec_serving.clients.wire import RETRY_AFTER_HEADER, RETRY_AFTER_MS_KEY
from emotion2vec_serving.server.config import Settings
from emotion2vec_serving.server.http.responses import json_response

__all__ = ["add_routes", "openapi_spec"]


def openapi_spec(settings: Settings) -> dict[str, Any]:
    """The OpenAPI 3 description of the ``/v1`` endpoints (hand-written; tests check it against
    the server)."""
    error = {"$ref": "#/components/responses/Error"}
    number = {"type": "number"}
    scores = {"type": "object", "additionalProperties": number,
              "description": "English label -> probability, in model label order"}
    timing = {"type": "object", "properties": {k: number for k in
                                               ("queue_ms", "inference_ms", "decode_ms", "total_ms")}
              | {"batch_size": {"type": "integer"}}}
    model_ref = {"type": "object", "properties": {"name": {"type": "string"}, "version": {"type": "string"},
                                                  "precision": {"type": "string"},
                                                  "untrained": {"type": "boolean"}}}
    frame = {"type": "object", "properties": {"start_s": number, "end_s": number,
                                              "emotion": {"type": "string"}, "confidence": number,
                                              "scores": scores}}
    upload_body = {
        "required": True,
        "content": {
            "multipart/form-data": {"schema": {"type": "object", "properties": {
                "file": {"type": "string", "format": "binary"},
                "granularity": {"type": "string", "enum": list(GRANULARITIES)},
                "embedding": {"type": "boolean"}, "smoothing": {"type": "integer", "minimum": 0},
                "frames": {"type": "boolean"}}, "required": ["file"]}},
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
            "audio/*": {"schema": {"type": "string", "format": "binary"}},
        },
        "description": f"one WAV/MP3/M4A/FLAC/OGG file, at most {settings.max_message_bytes} bytes",
    }

    def q(name: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
        return {"name": name, "in": "query", "required": False, "schema": schema, "description": description}

    errors = {"400": error, "401": error, "413": error, "429": error, "503": error, "504": error}
    channel_params = [
        q("channels", {"type": "string", "enum": ["mix", "split"], "default": "mix"},
          "split: each channel of a multi-channel file answered apart (at most 8), in a 'channels' list"),
        q("channel_names", {"type": "string"},
          "with channels=split: comma-separated names, e.g. agent,customer"),
    ]
    return {
        "openapi": "3.0.3",
        "info": {"title": "emotion2vec serving: web API", "version": "1",
                 "description": "Speech emotion recognition. The same model, limits and authentication as "
                                "the gRPC emotion.v1 API. Errors are JSON {\"error\": message}; 429 and 503 "
                                f"carry {RETRY_AFTER_HEADER} (seconds) and {RETRY_AFTER_MS_KEY} headers."},
        "servers": [{"url": "/"}],
        "security": [{"bearer": []}],
        "paths": {
            "/v1/recognize": {"post": {
                "summary": "Emotion of one recording (the CLI's result.json)",
                "parameters": [
                    q("granularity", {"type": "string", "enum": list(GRANULARITIES), "default": "utterance"},
                      "utterance, or frame for 20 ms frame scores"),
                    q("embedding", {"type": "boolean", "default": False}, "include the utterance embedding"),
                    q("smoothing", {"type": "integer", "minimum": 0, "default": 0},
                      "frame granularity: moving average over N frames (alias smoothing_frames)"),
                    q("timeout_s", {"type": "number", "exclusiveMinimum": 0}, "deadline of the call"),
                    q("name", {"type": "string"}, "raw body: the name reported as 'input'"),
                    *channel_params,
                ],
                "requestBody": upload_body,
                "responses": {"200": {"description": "the result", "content": {"application/json": {
                    "schema": {"$ref": "#/components/schemas/Recognition"}}}}, **errors},
            }},
            "/v1/embed": {"post": {
                "summary": "Utterance (and frame) embeddings of one recording",
                "parameters": [q("frames", {"type": "boolean", "default": False}, "also frame embeddings"),
                               q("timeout_s", {"type": "number", "exclusiveMinimum": 0}, "deadline"),
                               q("name", {"type": "string"}, "raw body: the name reported as 'input'"),
                               *channel_params],
                "requestBody": upload_body,
                "responses": {"200": {"description": "the embedding", "content": {"application/json": {
                    "schema": {"$ref": "#/components/schemas/Embedding"}}}}, **errors},
            }},
            "/v1/model": {"get": {
                "summary": "The model card",
                "responses": {"200": {"description": "what the server serves", "content": {
                    "application/json": {"schema": {"$ref": "#/components/schemas/Model"}}}},
                    "401": error},
            }},
            "/v1/stream": {"get": {
                "summary": "Live recognition over a WebSocket",
                "description": (
                    "Upgrade to a WebSocket (subprotocol 'emotion.v1'). Send first a JSON config "
                    "{\"encoding\": \"s16le\"|\"f32le\", \"sample_rate_hz\": int, \"channels\": int, "
                    "\"segmentation\": {\"mode\": \"energy\"|\"fixed\", \"min_segment_s\", "
                    "\"max_segment_s\", \"min_silence_s\", \"energy_threshold_db\", \"window_s\", "
                    "\"hop_s\"}, \"embedding\": bool, "
                    "\"priority\": int, \"token\": str}, then binary PCM chunks (interleaved little-endian), "
                    "then {\"end\": true}. The server answers {\"type\": \"started\"}, then one "
                    "{\"type\": \"segment\", ...} per recognised segment and a final {\"type\": \"summary\", "
                    "...}; or {\"type\": \"error\", \"status\", \"code\", \"error\"} and closes with code "
                    "4000 + status; the time limits (no config within --stream-idle-timeout-s of the "
                    "connect, no audio for that long, open longer than --stream-max-open-s) close with 4504 "
                    "and the reason config_timeout, idle_timeout or duration_limit. Browsers cannot set an "
                    "Authorization header: offer the subprotocol "
                    "'bearer.<token>' beside 'emotion.v1', or put \"token\" in the config message."),
                "responses": {"101": {"description": "switching to the WebSocket protocol"},
                              "400": error, "401": error},
            }},
            "/openapi.json": {"get": {"summary": "This description", "security": [],
                                      "responses": {"200": {"description": "OpenAPI 3 document"}}}},
        },
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer",
                                           "description": "needed when the server has tokens"}},
            "responses": {"Error": {"description": "an error a person can read", "content": {
                "application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}},
            "schemas": {
                "Error": {"type": "object", "properties": {"error": {"type": "string"}},
                          "required": ["error"]},
                # emotion, emotion_zh, confidence, scores and timing too, but with channels=split.
                "Recognition": {"type": "object", "required": ["granularity", "duration_s", "model"],
                                "properties": {
                    "emotion": {"type": "string"}, "emotion_zh": {"type": "string"}, "confidence": number,
                    "scores": scores, "granularity": {"type": "string", "enum": list(GRANULARITIES)},
                    "input": {"type": "string"}, "duration_s": number, "timing": timing, "model": model_ref,
                    "frames": {"type": "array", "items": frame},
                    "voiced_s": {**number, "description": "long recordings: audio inside segments"},
                    "segments": {"type": "array", "description": (
                        "long recordings (longer than one model pass): one entry per segment; the fields "
                        "above are then the duration-weighted aggregate"),
                                 "items": {"type": "object", "properties": {
                                     "segment_id": {"type": "integer"}, "start_s": number, "end_s": number,
                                     "emotion": {"type": "string"}, "emotion_zh": {"type": "string"},
                                     "confidence": number, "scores": scores, "timing": timing,
                                     "first_frame": {"type": "integer", "description": "index into frames"},
                                     "frame_count": {"type": "integer"}}}},
                    "embedding": {"type": "array", "items": number},
                    "channel_mode": {"type": "string", "enum": ["split"], "description": (
                        "channels=split only: the emotion fields, timing, frames, segments and embedding are "
                        "then in each entry of 'channels' instead of at the top level")},
                    "channels": {"type": "array", "description": "channels=split: one entry per channel",
                                 "items": {"type": "object", "properties": {
                                     "channel": {"type": "integer"}, "name": {"type": "string"}}}}}},
                "Embedding": {"type": "object", "required": ["dim", "embedding", "duration_s", "model"],
                              "properties": {
                                  "input": {"type": "string"}, "dim": {"type": "integer"},
                                  "embedding": {"type": "array", "items": number}, "duration_s": number,
                                  "timing": timing, "model": model_ref,
                                  "frames": {"type": "array", "items": {"type": "array", "items": number}},
                                  "segments": {"type": "array", "description": "long recordings: per segment",
                                               "items": {"type": "object", "properties": {
                                                   "segment_id": {"type": "integer"}, "start_s": number,
                                                   "end_s": number,
                                                   "embedding": {"type": "array", "items": number},
                                                   "first_frame": {"type": "integer"},
                                                   "frame_count": {"type": "integer"},
                                                   "timing": timing}}}}},
                "Model": {"type": "object", "properties": {
                    "model": model_ref,
                    "labels": {"type": "array", "items": {"type": "object", "properties": {
                        "index": {"type": "integer"}, "name": {"type": "string"},
                        "name_zh": {"type": "string"}, "enabled": {"type": "boolean"}}}},
                    "sample_rate_hz": {"type": "integer"}, "frame_rate_hz": number,
                    "embedding_dim": {"type": "integer"}, "execution_provider": {"type": "string"},
                    "engine": {"type": "string"}, "has_head": {"type": "boolean"},
                    "max_duration_s": {**number, "description": "longest single model pass"},
                    "min_duration_s": number,
                    "max_audio_s": {**number, "description": "longest recording (0: only the upload limit)"},
                    "max_segment_s": {**number, "description": "longest segment of a long recording"},
                    "max_upload_bytes": {"type": "integer"},
                    "warnings": {"type": "array", "items": {"type": "string"},
                                 "description": "what to know before trusting the answers, e.g. a model "
                                                "enabling fewer than its nine emotions; empty: none"},
                    "max_abs_prob_vs_fp32": {
                        **number, "nullable": True,
                        "description": "largest |difference| of a probability against the fp32 model, as the "
                                       "exporter measured it (null: not measured)"},
                    "max_abs_prob_batch_vs_alone": {
                        **number, "nullable": True,
                        "description": "largest |difference| of a probability between an audio alone and "
                                       "in a batch as this server batches it (0 with --max-batch-size 1; "
                                       "null: not measured for this engine, device or thread count)"}}},
            },
        },
    }


def add_routes(app: web.Application, settings: Settings) -> None:
    """``GET /openapi.json`` (public: it holds no data)."""
    spec = openapi_spec(settings)

    async def openapi(request: web.Request) -> web.StreamResponse:
        return json_response(spec)

    app.router.add_get("/openapi.json", openapi)
