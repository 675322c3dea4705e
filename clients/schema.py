"""The JSON schema of results: ``result.json`` of ``emotion-client recognize`` and the web API's answers.

One module writes these documents for the CLI (from the client's dataclasses, ``clients/results.py``) and for
the server's HTTP API (from the core's domain types): standard library only and shipped with the light
client; ``clients/__init__`` is lazy, so importing this module loads no gRPC and no numpy.

The builders are duck-typed over the attribute names both sides share:

- a *result* has ``label``, ``label_zh``, ``confidence`` and ``scores`` itself (the client's flat
  dataclasses) or on its ``utterance`` (``overall`` for a stream summary: the server's types);
- ``scores`` is a mapping label -> probability, or a sequence of items with ``label`` and ``score``;
- a frame's ``scores`` is a mapping, or a sequence of probabilities in the result's label order;
- ``timing`` has ``queue_ms``, ``inference_ms``, ``decode_ms``, ``total_ms``, ``batch_size``; a model
  reference has ``name``, ``version``, ``precision``, ``untrained``;
- vectors (embeddings) are anything with ``tolist()`` (numpy arrays) or sequences of numbers.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

__all__ = [
    "GRANULARITIES",
    "embedding_json",
    "model_ref_json",
    "recognition_json",
    "scores_json",
    "stream_segment_json",
    "stream_summary_json",
    "timing_json",
]

#: Values of ``granularity``: one result per recording, or per 20 ms frame as well.
GRANULARITIES = ("utterance", "frame")


def _top(result: Any, attr: str = "utterance") -> Any:
    """The object holding label, label_zh, confidence and scores (the result itself when flat)."""
    return getattr(result, attr, result)


def _vector(values: Any) -> list[Any]:
    tolist = getattr(values, "tolist", None)
    if tolist is not None:
        out: list[Any] = tolist()
        return out
    return [_vector(v) if isinstance(v, Iterable) else float(v) for v in values]


def timing_json(t: Any) -> dict[str, Any]:
    return {"queue_ms": float(t.queue_ms), "inference_ms": float(t.inference_ms),
            "decode_ms": float(t.decode_ms), "total_ms": float(t.total_ms), "batch_size": int(t.batch_size)}


def model_ref_json(model: Any) -> dict[str, Any]:
    return {"name": model.name, "version": model.version, "precision": model.precision,
            "untrained": bool(model.untrained)}


def scores_json(scores: Any) -> dict[str, float]:
    """label -> probability, in model label order."""
    if isinstance(scores, Mapping):
        return {str(k): float(v) for k, v in scores.items()}
    return {s.label: float(s.score) for s in scores}


def _labels(scores: Any) -> tuple[str, ...]:
    if isinstance(scores, Mapping):
        return tuple(scores)
    return tuple(s.label for s in scores)


def _frame_json(f: Any, labels: tuple[str, ...]) -> dict[str, Any]:
    scores = f.scores
    return {
        "start_s": float(f.start_s),
        "end_s": float(f.end_s),
        "emotion": f.label,
        "confidence": float(f.confidence),
        "scores": scores_json(scores) if isinstance(scores, Mapping)
        else {name: float(v) for name, v in zip(labels, scores, strict=False)},
    }


def _frame_count(seg: Any) -> int:
    count = getattr(seg, "frame_count", None)
    return int(count) if count is not None else len(getattr(seg, "frames", ()))


def _segment_json(seg: Any, first_frame: int, *, frames: bool) -> dict[str, Any]:
    """One segment of a long recording (issue 13)."""
    top = _top(seg)
    out: dict[str, Any] = {
        "segment_id": int(seg.segment_id),
        "start_s": float(seg.start_s),
        "end_s": float(seg.end_s),
        "emotion": top.label,
        "emotion_zh": top.label_zh,
        "confidence": float(top.confidence),
        "scores": scores_json(top.scores),
        "timing": timing_json(seg.timing),
    }
    if frames:
        # Indices into the top-level "frames" list (which holds every frame, absolute times).
        out["first_frame"] = int(getattr(seg, "first_frame", first_frame))
        out["frame_count"] = _frame_count(seg)
    return out


def _recognition_body(result: Any, granularity: str, embedding: bool) -> dict[str, Any]:
    """duration_s, [voiced_s], timing, [frames], [segments], [embedding] of one recognised signal."""
    out: dict[str, Any] = {"duration_s": float(result.duration_s), "timing": timing_json(result.timing)}
    if granularity == "frame":
        labels = _labels(_top(result).scores)
        out["frames"] = [_frame_json(f, labels) for f in result.frames]
    segments = getattr(result, "segments", ())
    if segments:
        # Long recordings: the emotion and scores are an aggregate over these segments.
        out["voiced_s"] = float(result.voiced_s)
        out["segments"] = []
        first = 0  # segment frames are consecutive runs of the "frames" list, in order
        for seg in segments:
            out["segments"].append(_segment_json(seg, first, frames=granularity == "frame"))
            first += _frame_count(seg)
    if embedding and result.embedding is not None:
        out["embedding"] = _vector(result.embedding)
    return out


def _emotion_json(result: Any) -> dict[str, Any]:
    top = _top(result)
    return {"emotion": top.label, "emotion_zh": top.label_zh, "confidence": float(top.confidence),
            "scores": scores_json(top.scores)}


def _channel_body(channel: Any) -> Any:
    """The recognised (or embedded) signal of one channel (the server's types wrap it; the client's are
    flat)."""
    for attr in ("recognition", "result"):
        inner = getattr(channel, attr, None)
        if inner is not None:
            return inner
    return channel


def recognition_json(result: Any, model: Any = None, *, granularity: str | None = None,
                     input_name: str | None = None, embedding: bool = False) -> dict[str, Any]:
    """``result.json``: emotion, emotion_zh, confidence, scores, granularity, [input], duration_s, timing,
    model, [frames], [voiced_s, segments] (long recordings), [embedding] (when ``embedding`` and present).

    A result split into channels (``channels="split"``: the result has a non-empty ``channels``) is instead
    ``{"channel_mode": "split", "granularity", [input], "duration_s", "model", "channels": [...]}``, each
    channel ``{"channel", "name", emotion, emotion_zh, confidence, scores, duration_s, timing, [frames],
    [voiced_s, segments], [embedding]}``: what a mono file holding only that channel gets.

    ``model`` and ``granularity`` default to the result's own ``model`` and ``granularity`` (the client's
    ``Recognition`` carries them; the server passes its model card and the granularity asked for).
    """
    model = result.model if model is None else model
    granularity = str(granularity or getattr(result, "granularity", "utterance"))
    channels = getattr(result, "channels", ())
    if channels:
        doc: dict[str, Any] = {"channel_mode": "split", "granularity": granularity}
        if input_name is not None:
            doc["input"] = input_name
        doc["duration_s"] = float(result.duration_s)
        doc["model"] = model_ref_json(model)
        doc["channels"] = []
        for ch in channels:
            body = _channel_body(ch)
            doc["channels"].append({"channel": int(ch.channel), "name": str(ch.name), **_emotion_json(body),
                                    **_recognition_body(body, granularity, embedding)})
        return doc
    out: dict[str, Any] = {**_emotion_json(result), "granularity": granularity}
    if input_name is not None:
        out["input"] = input_name
    body = _recognition_body(result, granularity, embedding)
    out["duration_s"] = body.pop("duration_s")
    out["timing"] = body.pop("timing")
    out["model"] = model_ref_json(model)
    out.update(body)  # frames, voiced_s and segments, embedding: the order result.json always had
    return out


def _embedding_body(result: Any) -> dict[str, Any]:
    vector = _vector(result.embedding)
    # The frame embeddings: ``frame_features`` on the server's result, ``frames`` on the client's.
    frames = result.frame_features if hasattr(result, "frame_features") else getattr(result, "frames", None)
    out: dict[str, Any] = {"dim": len(vector), "embedding": vector, "duration_s": float(result.duration_s),
                           "timing": timing_json(result.timing)}
    if frames is not None:
        out["frames"] = _vector(frames)
    segments = getattr(result, "segments", ())
    if segments:  # long recordings: the embedding above is the frame-weighted mean of these
        out["segments"] = [{
            "segment_id": int(seg.segment_id), "start_s": float(seg.start_s), "end_s": float(seg.end_s),
            "embedding": _vector(seg.embedding),
            "first_frame": int(seg.first_frame), "frame_count": int(seg.frame_count),
            "timing": timing_json(seg.timing),
        } for seg in segments]
    return out


def embedding_json(result: Any, model: Any = None, *, input_name: str | None = None) -> dict[str, Any]:
    """An ``embed`` result: [input], dim, embedding, duration_s, timing, model, [frames], [segments].

    Split into channels: ``{"channel_mode": "split", [input], "duration_s", "model", "channels": [...]}``,
    each channel ``{"channel", "name", dim, embedding, duration_s, timing, [frames], [segments]}``.
    """
    model = result.model if model is None else model
    channels = getattr(result, "channels", ())
    out: dict[str, Any] = {}
    if channels:
        out["channel_mode"] = "split"
        if input_name is not None:
            out["input"] = input_name
        out["duration_s"] = float(result.duration_s)
        out["model"] = model_ref_json(model)
        out["channels"] = [
            {"channel": int(ch.channel), "name": str(ch.name), **_embedding_body(_channel_body(ch))}
            for ch in channels
        ]
        return out
    if input_name is not None:
        out["input"] = input_name
    body = _embedding_body(result)
    out["dim"], out["embedding"] = body.pop("dim"), body.pop("embedding")
    out["duration_s"], out["timing"] = body.pop("duration_s"), body.pop("timing")
    out["model"] = model_ref_json(model)
    out.update(body)
    return out


def stream_segment_json(segment: Any) -> dict[str, Any]:
    """One segment of a stream as it is recognised (``{"type": "segment", ...}``)."""
    top = _top(segment)
    out: dict[str, Any] = {
        "type": "segment",
        "segment_id": int(segment.segment_id),
        "start_s": float(segment.start_s),
        "end_s": float(segment.end_s),
        "emotion": top.label,
        "emotion_zh": top.label_zh,
        "confidence": float(top.confidence),
        "scores": scores_json(top.scores),
        "timing": timing_json(segment.timing),
    }
    if segment.embedding is not None:
        out["embedding"] = _vector(segment.embedding)
    return out


def stream_summary_json(summary: Any, model: Any = None) -> dict[str, Any]:
    """The end of a stream (``{"type": "summary", ...}``): totals and the duration-weighted overall result
    (on ``overall`` for the server, which is ``None`` when nothing was voiced)."""
    model = getattr(summary, "model", None) if model is None else model
    overall = _top(summary, "overall")
    return {
        "type": "summary",
        "segments": int(summary.segments),
        "duration_s": float(summary.duration_s),
        "voiced_s": float(summary.voiced_s),
        "emotion": overall.label if overall is not None else "",
        "emotion_zh": overall.label_zh if overall is not None else "",
        "confidence": float(overall.confidence) if overall is not None else 0.0,
        "scores": scores_json(overall.scores) if overall is not None else {},
        "label_seconds": scores_json(summary.label_seconds),
        "model": model_ref_json(model) if model is not None else None,
    }
