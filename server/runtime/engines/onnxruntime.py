"""ONNX Runtime sessions in the engine-neutral shape the runner uses.

A run handle wraps one ``onnxruntime.RunOptions``: the watchdog's ``terminate()`` sets its ``terminate``
flag, which ONNX Runtime checks between graph nodes (the run then raises and the session is free again).
The same RunOptions carries the CPU arena shrinkage request (``memory.enable_memory_arena_shrinkage``), so
that RSS falls back to the weights after each run instead of staying at the peak of the longest batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

__all__ = ["CPU_PROVIDER", "OrtRunHandle", "OrtSession"]

CPU_PROVIDER = "CPUExecutionProvider"


class OrtRunHandle:
    """One run's ``RunOptions``; ``terminate()`` is safe from any thread."""

    __slots__ = ("run_options",)

    def __init__(self, run_options: Any) -> None:
        self.run_options = run_options

    def terminate(self) -> None:
        self.run_options.terminate = True

    @property
    def terminated(self) -> bool:
        return bool(self.run_options.terminate)


class OrtSession:
    """An ``onnxruntime.InferenceSession`` with run handles. ``precision`` is the model repository's."""

    engine = "onnxruntime"
    inference_precision: str | None = None  # the graph's own number format: the manifest says which

    def __init__(self, session: Any, *, arena_shrinkage: bool = False) -> None:
        self.session = session
        self._shrink_cpu = arena_shrinkage and session.get_providers()[:1] == [CPU_PROVIDER]

    def get_providers(self) -> list[str]:
        providers: list[str] = self.session.get_providers()
        return providers

    def new_run_handle(self) -> OrtRunHandle:
        import onnxruntime as ort

        run_options = ort.RunOptions()
        if self._shrink_cpu:
            run_options.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")
        return OrtRunHandle(run_options)

    def run(self, output_names: Sequence[str] | None, input_feed: dict[str, Any],
            run_handle: Any = None) -> list[Any]:
        run_options = run_handle.run_options if isinstance(run_handle, OrtRunHandle) else run_handle
        outputs: list[Any] = self.session.run(output_names, input_feed, run_options)
        return outputs
