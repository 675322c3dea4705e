"""The protocol-free core every front end calls: ``EmotionCore``.

The facade over the rooms of a call: admission and drain accounting (``admission``: every call counted
exactly once, ``emotion_requests_total{rpc,code,protocol}`` and ``emotion_rejections_total{reason}``
through the one classification in ``errors``), decoding and inference (``pipeline``), long recordings
(``longform``) and streams (``streams``). The domain types are in ``types``, the limits in ``limits``. A
failed call raises :class:`~.errors.CallFailed` carrying the :class:`~.errors.Failure` that the front end
maps to its own status (``grpc.status`` / ``http.status``). No protobuf, gRPC or HTTP types.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import Executor

import numpy as np
import numpy.typing as npt

from emotion2vec_serving.batching import BatchPolicy
from emotion2vec_serving.modelrepo.labels import served_warnings
from emotion2vec_serving.modelrepo.manifest import ModelManifest
from emotion2vec_serving.server.audio.store import PcmStore
from emotion2vec_serving.server.calls.admission import Admission
from emotion2vec_serving.server.calls.channels import SplitCalls, gather_all
from emotion2vec_serving.server.calls.errors import Failure, InvalidRequest
from emotion2vec_serving.server.calls.limits import CoreLimits
from emotion2vec_serving.server.calls.longform import LongCalls
from emotion2vec_serving.server.calls.pipeline import Pipeline
from emotion2vec_serving.server.calls.streams import StreamSession, StreamSettings
from emotion2vec_serving.server.calls.types import (
    AudioInput,
    BatcherLike,
    CallContext,
    EmbeddingResult,
    EmbedOptions,
    ModelCard,
    Recognition,
    RecognizeOptions,
    SplitEmbedding,
    SplitRecognition,
)
from emotion2vec_serving.server.metrics import ServerMetrics

__all__ = ["EmotionCore"]


class EmotionCore:
    """Admission, decoding, batching and results for every front end."""

    def __init__(
        self,
        manifest: ModelManifest,
        batcher: BatcherLike,
        metrics: ServerMetrics,
        limits: CoreLimits,
        decode_executor: Executor,
        provider: Callable[[], str],
        engine: str = "onnxruntime",
        cost_of: Callable[[int], int] | None = None,
        precision: str | None = None,
        batch_bound: Callable[[], float | None] | None = None,
    ) -> None:
        self._provider = provider
        # How far batch mates can move an answer as served (None: not known); without a caller that knows
        # the runner's threads, what the manifest bounds whatever the threads (padded batches).
        self._batch_bound = batch_bound or (lambda: manifest.batch_bound(None))
        self._engine = engine
        # The precision really run (e.g. OpenVINO's f32 for a bf16 request on a CPU without bf16); the
        # manifest's when the caller does not know better.
        self._precision = precision or manifest.precision
        self._warnings = served_warnings(manifest)
        # The batch policy, shown in the OIP model configuration (a batcher without one shows none).
        policy = getattr(batcher, "policy", None)
        self._policy = policy if isinstance(policy, BatchPolicy) else None
        # A call's items are queued at once: more than the queue holds could never be admitted (issue 22).
        self._max_request_items = (self._policy or BatchPolicy()).max_queue_requests
        self._admission = Admission(batcher, metrics, limits.max_concurrent_streams)
        self._pipeline = Pipeline(manifest, batcher, metrics, limits, decode_executor, cost_of)
        self._long = LongCalls(self._pipeline, self._admission.backlog)
        self._split = SplitCalls(self._pipeline, self._long)

    # ------------------------------------------------------------------ what is served

    # The pipeline owns the manifest, metrics and limits; the core shows them to the front ends.
    @property
    def manifest(self) -> ModelManifest:
        return self._pipeline.manifest

    @property
    def metrics(self) -> ServerMetrics:
        return self._pipeline.metrics

    @property
    def limits(self) -> CoreLimits:
        return self._pipeline.limits

    @property
    def decode_executor(self) -> Executor:
        return self._pipeline.decode_executor

    @property
    def max_request_items(self) -> int:
        """Most items one request may carry (an OIP batch): the batcher's queue bound
        (``--max-queue-requests``). Front ends refuse more while parsing, before any per-item work."""
        return self._max_request_items

    @property
    def enabled_labels(self) -> npt.NDArray[np.bool_]:
        """Mask of labels that can be predicted (``unuse*`` labels are False)."""
        return self._pipeline.enabled_labels

    def model_card(self) -> ModelCard:
        m = self.manifest
        longform = self.limits.longform
        return ModelCard(
            name=m.model_name, version=m.model_version, precision=self._precision, untrained=m.untrained,
            labels=m.labels, sample_rate_hz=m.sample_rate_hz, frame_rate_hz=m.frame_rate_hz,
            embedding_dim=m.embedding_dim, provider=self._provider(), engine=self._engine,
            max_duration_s=self.limits.audio.max_duration_s,
            min_duration_s=self.limits.audio.min_duration_s,
            has_head=m.has_head,
            max_audio_s=longform.max_audio_s if longform else 0.0,
            max_segment_s=longform.max_segment_s if longform else 0.0,
            warnings=self._warnings,
            max_abs_prob_vs_fp32=m.deviation_from_fp32.max_abs_probs if m.deviation_from_fp32 else None,
            max_abs_prob_batch_vs_alone=self._batch_bound(),
            max_batch_size=self._policy.max_batch_size if self._policy else 0,
            preferred_batch_sizes=self._policy.preferred_batch_sizes if self._policy else (),
            max_queue_delay_s=self._policy.max_queue_delay_s if self._policy else 0.0,
        )

    # ------------------------------------------------------------------ admission and lifecycle

    @property
    def draining(self) -> bool:
        return self._admission.draining

    @property
    def ready(self) -> bool:
        """Start-up finished and not draining (shared by every protocol's readiness)."""
        return self._admission.ready

    def mark_ready(self) -> None:
        self._admission.mark_ready()

    def withdraw_readiness(self) -> None:
        """Report not ready on every protocol while still serving: the drain's first step (issue 14)."""
        self._admission.withdraw_readiness()

    def begin_drain(self) -> None:
        """Refuse new calls (UNAVAILABLE); calls already accepted run to completion."""
        self._admission.begin_drain()

    @property
    def active_streams(self) -> int:
        return self._admission.active_streams

    @property
    def inflight(self) -> int:
        return self._admission.inflight

    async def wait_idle(self, timeout_s: float) -> bool:
        """Wait until no call is in progress (or the timeout); True when idle."""
        return await self._admission.wait_idle(timeout_s)

    @property
    def outcomes(self) -> dict[tuple[str, str, str], int]:
        """Calls answered since start by (protocol, rpc, code): a call counted here reached the core."""
        return self._admission.outcomes

    def estimated_drain_s(self) -> float:
        """Seconds to run the queued work, counting the segments of long recordings not yet queued."""
        return self._admission.estimated_drain_s()

    def refuse(self, exc: BaseException, call: CallContext) -> Failure:
        """Count a call a front end refused before calling the core (e.g. a malformed message).

        A draining server reports the drain instead, as it would for any call.
        """
        return self._admission.refuse(exc, call)

    # ------------------------------------------------------------------ calls

    async def recognize(self, audio: AudioInput, options: RecognizeOptions, call: CallContext) -> Recognition:
        """Emotion of one utterance (with frames and the embedding when asked)."""
        return await self._admission.unary(call, lambda start: self._recognize(audio, options, call, start))

    async def embed(self, audio: AudioInput, options: EmbedOptions, call: CallContext) -> EmbeddingResult:
        """Utterance embedding (and per-frame features when asked); works without a classifier head."""
        return await self._admission.unary(call, lambda start: self._embed(audio, options, call, start))

    async def recognize_split(self, audio: AudioInput, options: RecognizeOptions,
                              call: CallContext) -> SplitRecognition:
        """Each channel of the recording recognised apart (channel splitting, ``channels``)."""
        return await self._admission.unary(
            call, lambda start: self._recognize_split(audio, options, call, start))

    async def embed_split(self, audio: AudioInput, options: EmbedOptions,
                          call: CallContext) -> SplitEmbedding:
        """Each channel of the recording embedded apart (channel splitting, ``channels``)."""

        async def body(start: float) -> SplitEmbedding:
            result = await self._split.embed(audio, options, call, start)
            self.metrics.observe_audio(call.rpc, result.duration_s, call.protocol)
            return result

        return await self._admission.unary(call, body)

    async def recognize_many(self, audios: Sequence[AudioInput], options: RecognizeOptions,
                             call: CallContext) -> list[Recognition]:
        """Several utterances in one call: each its own batcher item, all submitted at once.

        The answer equals recognising them one by one; any item's error fails the whole call.
        """

        async def body(start: float) -> list[Recognition]:
            self._check_batch(audios)
            results = await gather_all([self._recognize(a, options, call, start, observe=False)
                                        for a in audios])
            for r in results:
                self._observe_recognition(call, r)
            return results

        return await self._admission.unary(call, body)

    async def recognize_many_split(self, audios: Sequence[AudioInput], options: RecognizeOptions,
                                   call: CallContext) -> list[SplitRecognition]:
        """``recognize_many`` with every item split into its channels (all channels of all items at once)."""

        async def body(start: float) -> list[SplitRecognition]:
            self._check_batch(audios)
            results = await gather_all([self._recognize_split(a, options, call, start, observe=False)
                                        for a in audios])
            for r in results:
                self._observe_split(call, r)
            return results

        return await self._admission.unary(call, body)

    def _check_batch(self, audios: Sequence[AudioInput]) -> None:
        if not audios:
            raise InvalidRequest("the request holds no audio (batch of 0)")
        if len(audios) > self._max_request_items:
            raise InvalidRequest(f"a batch of {len(audios)} items is more than this server takes in one "
                                 f"request (the limit is {self._max_request_items} items, "
                                 "--max-queue-requests)")

    @contextlib.asynccontextmanager
    async def stream(self, settings: StreamSettings | None,
                     call: CallContext) -> AsyncIterator[StreamSession]:
        """Admission for one stream; yields a :class:`~.streams.StreamSession`. Counts the call once at exit.

        ``settings`` may be None when the protocol sends them in-band: then call
        ``session.configure(settings)`` before ``session.run``. Any exception raised inside the block is
        classified, counted and re-raised as :class:`~.errors.CallFailed`.
        """
        async with self._admission.stream(call):
            self._pipeline.require_head()
            session = StreamSession(self._pipeline, call)
            with session.ending_counted():  # emotion_stream_endings_total, once per admitted stream
                if settings is not None:
                    session.configure(settings)
                yield session

    # ------------------------------------------------------------------ call bodies

    def _observe_recognition(self, call: CallContext, recognition: Recognition) -> None:
        self.metrics.observe_audio(call.rpc, recognition.duration_s, call.protocol)
        self.metrics.observe_prediction(recognition.utterance.label, recognition.utterance.confidence)

    async def _recognize(self, audio: AudioInput, options: RecognizeOptions, call: CallContext, start: float,
                         *, observe: bool = True) -> Recognition:
        self._pipeline.require_head()
        waveform, decode_s = await self._pipeline.decode(audio, call.trace)
        if isinstance(waveform, PcmStore):
            recognition = await self._long.recognize(waveform, decode_s, options, call, start)
        else:
            recognition = await self._pipeline.recognize(waveform, decode_s, options, call, start)
        if observe:
            self._observe_recognition(call, recognition)
        return recognition

    def _observe_split(self, call: CallContext, result: SplitRecognition) -> None:
        self.metrics.observe_audio(call.rpc, result.duration_s, call.protocol)
        for channel in result.channels:
            u = channel.recognition.utterance
            self.metrics.observe_prediction(u.label, u.confidence)

    async def _recognize_split(self, audio: AudioInput, options: RecognizeOptions, call: CallContext,
                               start: float, *, observe: bool = True) -> SplitRecognition:
        result = await self._split.recognize(audio, options, call, start)
        if observe:
            self._observe_split(call, result)
        return result

    async def _embed(self, audio: AudioInput, options: EmbedOptions, call: CallContext,
                     start: float) -> EmbeddingResult:
        waveform, decode_s = await self._pipeline.decode(audio, call.trace)
        if isinstance(waveform, PcmStore):
            result = await self._long.embed(waveform, decode_s, options, call, start)
        else:
            result = await self._pipeline.embed(waveform, decode_s, options, call, start)
        self.metrics.observe_audio(call.rpc, result.duration_s, call.protocol)
        return result
