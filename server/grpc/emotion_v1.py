"""The ``emotion.v1.EmotionRecognizer`` servicer: protobuf <-> core types, nothing else.

Admission, decoding, batching, counting and error classification live in ``core.EmotionCore``; this
adapter turns requests into ``AudioInput`` and options, results into protobuf, and a ``CallFailed`` into
the gRPC status of ``grpc_status``. A call's gRPC deadline becomes its core (batcher) deadline; a
cancelled call cancels its batcher request.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc
from emotion.v1 import emotion_pb2, emotion_pb2_grpc

from emotion2vec_serving.server.calls.core import EmotionCore
from emotion2vec_serving.server.calls.errors import CallFailed, InvalidRequest
from emotion2vec_serving.server.calls.types import EmbedOptions, RecognizeOptions
from emotion2vec_serving.server.grpc.convert import (
    audio_input,
    call_context,
    channel_split,
    fill_embedding,
    fill_recognition,
    frames_wanted,
    model_ref,
)
from emotion2vec_serving.server.grpc.status import abort
from emotion2vec_serving.server.grpc.streaming import stream_recognize

__all__ = ["EmotionService"]

# ---------------------------------------------------------------------------------------- servicer


class EmotionService(emotion_pb2_grpc.EmotionRecognizerServicer):  # type: ignore[misc]
    """Servicer for Recognize, Embed, StreamRecognize and GetModelInfo over an ``EmotionCore``."""

    def __init__(self, core: EmotionCore) -> None:
        self._core = core
        self._model_ref = model_ref(core)

    @property
    def core(self) -> EmotionCore:
        return self._core

    @property
    def active_streams(self) -> int:
        return self._core.active_streams

    @property
    def model_ref(self) -> emotion_pb2.ModelRef:
        return self._model_ref

    async def Recognize(
        self, request: emotion_pb2.RecognizeRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> emotion_pb2.RecognizeResponse:
        call = call_context("Recognize", context, request.priority)
        try:
            split = channel_split(request.channel_mode, request.channel_names)
            options = RecognizeOptions(frames=frames_wanted(request.granularity),
                                       smoothing_frames=int(request.smoothing_frames),
                                       embedding=request.return_embedding,
                                       channel_names=tuple(request.channel_names))
            audio = audio_input(request.audio)
        except InvalidRequest as exc:
            await abort(context, self._core.refuse(exc, call))
        if split:
            try:
                channels = await self._core.recognize_split(audio, options, call)
            except CallFailed as failed:
                await abort(context, failed.failure)
            response = emotion_pb2.RecognizeResponse(duration_s=channels.duration_s, model=self._model_ref)
            for ch in channels.channels:
                item = response.channels.add(channel=ch.channel, name=ch.name,
                                             duration_s=ch.recognition.duration_s)
                fill_recognition(item, ch.recognition)
            return response
        try:
            result = await self._core.recognize(audio, options, call)
        except CallFailed as failed:
            await abort(context, failed.failure)
        response = emotion_pb2.RecognizeResponse(duration_s=result.duration_s, model=self._model_ref)
        fill_recognition(response, result)
        return response

    async def Embed(
        self, request: emotion_pb2.EmbedRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> emotion_pb2.EmbedResponse:
        call = call_context("Embed", context, request.priority)
        try:
            split = channel_split(request.channel_mode, request.channel_names)
            options = EmbedOptions(frames=request.return_frames, channel_names=tuple(request.channel_names))
            audio = audio_input(request.audio)
        except InvalidRequest as exc:
            await abort(context, self._core.refuse(exc, call))
        if split:
            try:
                channels = await self._core.embed_split(audio, options, call)
            except CallFailed as failed:
                await abort(context, failed.failure)
            response = emotion_pb2.EmbedResponse(duration_s=channels.duration_s, model=self._model_ref,
                                                 dim=self._core.manifest.embedding_dim)
            for ch in channels.channels:
                item = response.channels.add(channel=ch.channel, name=ch.name,
                                             duration_s=ch.result.duration_s)
                fill_embedding(item, ch.result)
            return response
        try:
            result = await self._core.embed(audio, options, call)
        except CallFailed as failed:
            await abort(context, failed.failure)
        response = emotion_pb2.EmbedResponse(dim=int(result.embedding.shape[0]), duration_s=result.duration_s,
                                             model=self._model_ref)
        fill_embedding(response, result)
        return response

    async def GetModelInfo(
        self, request: emotion_pb2.GetModelInfoRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> emotion_pb2.ModelInfo:
        card = self._core.model_card()
        return emotion_pb2.ModelInfo(
            model=self._model_ref,
            labels=[emotion_pb2.EmotionScore(label=lb.name, label_zh=lb.name_zh, index=lb.index)
                    for lb in card.labels],
            sample_rate_hz=card.sample_rate_hz,
            frame_rate_hz=card.frame_rate_hz,
            embedding_dim=card.embedding_dim,
            execution_provider=card.provider,
            max_duration_s=card.max_duration_s,
            min_duration_s=card.min_duration_s,
            max_audio_s=card.max_audio_s,
            max_segment_s=card.max_segment_s,
            engine=card.engine,
            warnings=list(card.warnings),
            max_abs_prob_vs_fp32=card.max_abs_prob_vs_fp32,
            max_abs_prob_batch_vs_alone=card.max_abs_prob_batch_vs_alone,
        )

    async def StreamRecognize(
        self,
        request_iterator: AsyncIterator[emotion_pb2.StreamRecognizeRequest],
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> AsyncIterator[emotion_pb2.StreamRecognizeResponse]:
        # An async generator method, so grpc.aio runs it on the event loop.
        async for response in stream_recognize(self._core, self._model_ref, request_iterator, context):
            yield response
