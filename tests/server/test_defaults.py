"""One set of defaults: what a component built without ``Settings`` does equals the default server.

Each dataclass the server builds from ``Settings`` is compared field by field with ``Settings()``; a new
field with a ``Settings`` counterpart of the same name is compared automatically. The batch policy the
default settings build is ``BatchPolicy()``; long recordings, the segmenters and a stream's segmentation
left at 0 use the values stated in ``server/defaults.py``. Also: the batch policy names come from the one
registry of decision functions.
"""

from __future__ import annotations

import dataclasses
import inspect
from typing import Any

import pytest

from emotion2vec_serving.batching import DECISIONS, BatchPolicy, decide, decide_equal_shape, decide_fifo
from emotion2vec_serving.server import defaults
from emotion2vec_serving.server.app import BATCH_DECISIONS
from emotion2vec_serving.server.audio.errors import AudioLimits
from emotion2vec_serving.server.audio.segmenter import EnergySegmenter, FixedSegmenter
from emotion2vec_serving.server.calls.limits import CoreLimits, LongformSettings
from emotion2vec_serving.server.calls.streams import SEGMENTATION_DEFAULTS
from emotion2vec_serving.server.config import BATCH_POLICIES, Settings, SettingsError, parse_settings
from emotion2vec_serving.server.runtime.contract import RunnerOptions

#: dataclass field -> Settings field, where the names differ.
RENAMED: dict[type, dict[str, str]] = {
    AudioLimits: {"max_encoded_bytes": "max_message_bytes"},
    RunnerOptions: {"instances": "runner_instances", "allow_spinning": "ort_allow_spinning",
                    "cpu_arena": "ort_cpu_arena", "arena_shrinkage": "ort_arena_shrinkage"},
}
#: Fields whose Settings value is text parsed into another type (compared where it is parsed, not here).
CONVERTED: dict[type, set[str]] = {RunnerOptions: {"length_buckets"}}
SETTINGS_DEFAULTS = {f.name: getattr(Settings(), f.name) for f in dataclasses.fields(Settings)}


def _default(field: dataclasses.Field[Any]) -> Any:
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return dataclasses.MISSING


def _pairs(cls: type) -> list[tuple[str, str]]:
    renamed = RENAMED.get(cls, {})
    out = []
    for field in dataclasses.fields(cls):
        setting = renamed.get(field.name, field.name)
        if setting in SETTINGS_DEFAULTS and field.name not in CONVERTED.get(cls, set()):
            out.append((field.name, setting))
    return out


@pytest.mark.parametrize("cls", [AudioLimits, RunnerOptions], ids=lambda c: c.__name__)
def test_dataclass_defaults_equal_the_settings_defaults(cls: type) -> None:
    pairs = _pairs(cls)
    assert len(pairs) >= 3, f"{cls.__name__} shares almost no field with Settings: {pairs}"
    fields = {f.name: f for f in dataclasses.fields(cls)}
    differ = {
        name: (_default(fields[name]), SETTINGS_DEFAULTS[setting])
        for name, setting in pairs
        if _default(fields[name]) != SETTINGS_DEFAULTS[setting]
    }
    assert not differ, f"{cls.__name__} defaults differ from Settings (dataclass, Settings): {differ}"


def test_every_renamed_field_exists_on_both_sides() -> None:
    for cls, renamed in RENAMED.items():
        names = {f.name for f in dataclasses.fields(cls)}
        for field, setting in renamed.items():
            assert field in names, f"{cls.__name__}.{field} no longer exists"
            assert setting in SETTINGS_DEFAULTS, f"Settings.{setting} no longer exists"


def test_audio_limits_built_by_default_equal_the_default_server() -> None:
    assert AudioLimits() == CoreLimits.from_settings(Settings(), defaults.SAMPLE_RATE_HZ).audio


def test_core_limits_come_from_settings() -> None:
    s = dataclasses.replace(Settings(), default_timeout_s=7.0, max_concurrent_streams=3,
                            max_stream_duration_s=99.0, min_duration_s=0.2, max_message_bytes=1 << 20)
    limits = CoreLimits.from_settings(s, 8000)
    assert limits.default_timeout_s == 7.0
    assert (limits.max_concurrent_streams, limits.max_stream_duration_s) == (3, 99.0)
    assert (limits.audio.min_duration_s, limits.audio.max_encoded_bytes) == (0.2, 1 << 20)
    assert limits.audio.target_sample_rate_hz == 8000


def test_batch_policies_are_the_one_registry() -> None:
    assert tuple(DECISIONS) == BATCH_POLICIES
    assert BATCH_DECISIONS is DECISIONS
    assert {"length_aware": decide, "fifo": decide_fifo, "equal_shape": decide_equal_shape} == DECISIONS
    assert Settings().batch_policy in DECISIONS
    for name in DECISIONS:
        assert parse_settings(["--batch-policy", name], env={}).batch_policy == name
    with pytest.raises(SettingsError, match="batch policy 'lifo'"):
        parse_settings(["--batch-policy", "lifo"], env={})


# ------------------------------------------------------------------ batching: stated once in BatchPolicy


def test_the_default_settings_build_the_default_batch_policy() -> None:
    """``BatchPolicy`` states the batching defaults; ``Settings`` takes them in its own units."""
    assert Settings().to_batch_policy(defaults.SAMPLE_RATE_HZ) == BatchPolicy()


def test_batches_side_by_side_hold_at_most_one_default_batch() -> None:
    # The adaptive runner's side-by-side bound is the default batch's own: two batches at once never hold
    # more activations than one full batch alone (the peak-memory bound of issue 24).
    settings = Settings()
    assert settings.side_by_side_audio_s == settings.max_batch_audio_s > 0
    assert RunnerOptions().side_by_side_audio_s * defaults.SAMPLE_RATE_HZ == BatchPolicy().max_batch_cost


def test_every_batching_setting_reaches_the_policy() -> None:
    s = dataclasses.replace(Settings(), max_batch_size=3, preferred_batch_sizes=(2, 3), max_batch_audio_s=7.0,
                            max_queue_delay_ms=25.0, max_queue_requests=9, max_queue_audio_s=70.0,
                            adaptive_batching=False)
    assert s.to_batch_policy(8000) == BatchPolicy(
        max_batch_size=3, preferred_batch_sizes=(2, 3), max_batch_cost=7 * 8000, max_queue_delay_s=0.025,
        max_queue_requests=9, max_queue_cost=70 * 8000, adaptive=False,
    )


# ------------------------------------------------------------------ long recordings and segmentation

#: Segmentation setting -> its one stated default.
SEGMENTATION = {
    "min_segment_s": defaults.SEGMENT_MIN_S,
    "max_segment_s": defaults.STREAM_MAX_SEGMENT_S,
    "min_silence_s": defaults.SEGMENT_MIN_SILENCE_S,
    "energy_threshold_db": defaults.SEGMENT_ENERGY_THRESHOLD_DB,
    "window_s": defaults.FIXED_WINDOW_S,
}


def _parameter_defaults(function: Any) -> dict[str, Any]:
    return {name: p.default for name, p in inspect.signature(function).parameters.items()
            if p.default is not inspect.Parameter.empty}


def test_long_recordings_of_the_default_server_are_the_stated_defaults() -> None:
    built = CoreLimits.from_settings(Settings(), defaults.SAMPLE_RATE_HZ).longform
    assert built == LongformSettings()
    assert (built.max_audio_s, built.max_segment_s) == (defaults.MAX_AUDIO_S, defaults.MAX_DURATION_S)
    assert Settings().max_audio_s == defaults.MAX_AUDIO_S
    # Long recordings are end-pointed as streams are, except for the longest segment (one model pass).
    for name in ("min_segment_s", "min_silence_s", "energy_threshold_db"):
        assert getattr(built, name) == SEGMENTATION[name], name


def test_the_segmenters_defaults_are_the_stated_defaults() -> None:
    energy = _parameter_defaults(EnergySegmenter)
    assert {name: energy[name] for name in ("min_segment_s", "max_segment_s", "min_silence_s",
                                            "energy_threshold_db")} == {
        name: SEGMENTATION[name] for name in ("min_segment_s", "max_segment_s", "min_silence_s",
                                              "energy_threshold_db")}
    assert _parameter_defaults(FixedSegmenter)["window_s"] == SEGMENTATION["window_s"]
    assert energy["sample_rate_hz"] == _parameter_defaults(FixedSegmenter)["sample_rate_hz"] \
        == defaults.SAMPLE_RATE_HZ


def test_a_stream_leaving_segmentation_at_zero_gets_the_stated_defaults() -> None:
    assert SEGMENTATION_DEFAULTS == SEGMENTATION
    # The default longest segment fits in one model pass of the default server (else it would be capped).
    assert SEGMENTATION["max_segment_s"] <= Settings().max_duration_s
