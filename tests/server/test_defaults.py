"""One set of defaults: what a component built without ``Settings`` does equals the default server.

Each dataclass the server builds from ``Settings`` is compared field by field with ``Settings()``; a new
field with a ``Settings`` counterpart of the same name is compared automatically. Also: the batch policy
names come from the one registry of decision functions.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from emotion2vec_serving.batching import DECISIONS, decide, decide_equal_shape, decide_fifo
from emotion2vec_serving.server import defaults
from emotion2vec_serving.server.app import BATCH_DECISIONS
from emotion2vec_serving.server.audio.errors import AudioLimits
from emotion2vec_serving.server.calls.core import CoreLimits
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
