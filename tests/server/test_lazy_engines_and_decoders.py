"""What the runtime and audio rooms promise to load, and not to load, when they are imported.

- ``server/audio/errors.py`` is standard library only, so the call layer can classify audio errors without
  numpy, soxr or a decoder.
- Importing the runner, its contract and the engines loads no engine library: ONNX Runtime is imported when
  its factory creates a session (a server on ``--engine openvino`` never loads it), OpenVINO only when that
  engine is chosen. Heavy decoders (libsndfile, FFmpeg) load on the first encoded file, not on import.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from emotion2vec_serving.modelrepo.manifest import ModelManifest

ROOT = Path(__file__).resolve().parents[2]


def _loaded_after(code: str, watched: tuple[str, ...]) -> list[str]:
    """Run ``code`` in a fresh interpreter; the watched top-level modules it left in ``sys.modules``."""
    script = f"import sys\n{code}\nprint(','.join(m for m in {watched!r} if m in sys.modules))\n"
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True, cwd=ROOT)
    return [m for m in out.stdout.strip().split(",") if m]


def test_audio_errors_load_nothing_but_the_standard_library() -> None:
    loaded = _loaded_after("import emotion2vec_serving.server.audio.errors",
                           ("numpy", "soxr", "soundfile", "av"))
    assert loaded == []


def test_the_runtime_loads_no_engine_until_a_session_is_created() -> None:
    code = (
        "import emotion2vec_serving.server.runtime.runner, emotion2vec_serving.server.runtime.contract\n"
        "from emotion2vec_serving.server.runtime.engines import session_factory_for\n"
        "session_factory_for('onnxruntime')\n"
    )
    assert _loaded_after(code, ("onnxruntime", "openvino")) == []


def test_onnxruntime_loads_when_its_factory_creates_a_session(manifest: ModelManifest) -> None:
    code = (
        "from emotion2vec_serving.server.runtime.contract import RunnerOptions\n"
        "from emotion2vec_serving.server.runtime.engines.onnxruntime import ort_session_factory\n"
        "from emotion2vec_serving.server.runtime.providers import CPU_PROVIDER\n"
        f"ort_session_factory({str(manifest.onnx_path)!r}, [CPU_PROVIDER], RunnerOptions())\n"
    )
    assert _loaded_after(code, ("onnxruntime", "openvino")) == ["onnxruntime"]


def test_decoders_load_on_the_first_encoded_file_only() -> None:
    code = (
        "import numpy as np\n"
        "from emotion2vec_serving.server.audio import decode, pcm, segmenter\n"
        "pcm.decode_pcm(np.zeros(16000, '<i2').tobytes(), 's16le', 16000, 1)\n"
    )
    assert _loaded_after(code, ("soundfile", "av")) == []
