"""The light client install: the package without extras, installed alone in a fresh virtual environment,
holds the client (library and ``emotion-client``) and none of the server's heavy dependencies, and calls a
running server.

It installs from a copy of this tree (pip's cache makes it ~30 s); slow-marked because it builds a venv.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import venv
from pathlib import Path

import pytest

from tests.support.clients import AudioSet

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from emotion2vec_serving.clients import EmotionClient
from emotion2vec_serving.server.process import ServerProcess

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
HEAVY = ("onnxruntime", "av", "soxr", "soundfile", "torch", "aiohttp", "prometheus_client")


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    return env


@pytest.fixture(scope="module")
def light_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("light")
    src = base / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    # Every folder the distribution maps into the package (pyproject's package-dir), and nothing else.
    mapping = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["setuptools"]
    for folder in sorted({Path(d).parts[0] for d in mapping["package-dir"].values()}):
        shutil.copytree(ROOT / folder, src / folder, ignore=ignore)
    env_dir = base / "venv"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    pip = subprocess.run(
        [str(env_dir / "bin/python"), "-m", "pip", "install", "-q", str(src)],
        capture_output=True, text=True, env=_env(), cwd=base, timeout=300, check=False,
    )  # fmt: skip
    assert pip.returncode == 0, pip.stdout + pip.stderr
    return env_dir


def _python(env_dir: Path, code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(env_dir / "bin/python"), "-c", code],
        capture_output=True, text=True, env=_env(), cwd=env_dir, timeout=120, check=False,
    )  # fmt: skip


def test_light_install_has_no_server_dependencies(light_venv: Path) -> None:
    probe = _python(
        light_venv,
        "import importlib.util, json; "
        f"print(json.dumps({{m: importlib.util.find_spec(m) is not None for m in {list(HEAVY)!r}}}))",
    )
    assert probe.returncode == 0, probe.stderr
    present = json.loads(probe.stdout)
    assert not any(present.values()), f"the light install pulled in: {[m for m, p in present.items() if p]}"
    # ... and it is a separate environment: the client imports from it, not from this checkout.
    where = _python(light_venv, "import emotion2vec_serving.clients as c; print(c.__file__)")
    assert where.returncode == 0, where.stderr
    assert str(light_venv) in where.stdout


def test_the_stubs_run_on_both_protobuf_majors(light_venv: Path) -> None:
    """Alone, the client gets protobuf 7; the dev install (with tritonclient, protobuf < 7) runs the whole
    suite on protobuf 6: one set of stubs for both (README, Development)."""
    import google.protobuf

    code = "import google.protobuf as p, emotion.v1.emotion_pb2_grpc; print(p.__version__)"
    light = _python(light_venv, code)
    assert light.returncode == 0, light.stderr
    majors = {int(light.stdout.split(".")[0]), int(google.protobuf.__version__.split(".")[0])}
    assert majors == {6, 7}, (light.stdout, google.protobuf.__version__)


def test_emotion_server_says_which_extra_is_missing(light_venv: Path, tmp_path: Path) -> None:
    proc = subprocess.run(
        [str(light_venv / "bin/emotion-server"), "--model", "demo", "--model-cache-dir", str(tmp_path)],
        capture_output=True, text=True, env=_env(), cwd=tmp_path, timeout=60, check=False,
    )  # fmt: skip
    assert proc.returncode == 2
    assert "emotion2vec-serving[server]" in proc.stderr
    assert "onnxruntime" in proc.stderr


def test_light_client_calls_a_running_server(
    light_venv: Path, server: ServerProcess, audio: AudioSet
) -> None:
    with EmotionClient(server.target) as full:
        expected = {path.name: full.recognize(path, timeout=30) for path in (audio.wav, audio.mp3)}

    cli = subprocess.run(
        [str(light_venv / "bin/emotion-client"), "--target", server.target, "recognize",
         str(audio.wav), str(audio.mp3), "--json", "--no-progress"],
        capture_output=True, text=True, env=_env(), cwd=light_venv, timeout=120, check=False,
    )  # fmt: skip
    assert cli.returncode == 0, cli.stderr
    docs = [json.loads(line) for line in cli.stdout.splitlines() if line.strip()]
    assert len(docs) == 2
    for doc in docs:
        want = expected[Path(doc["input"]).name]
        assert doc["emotion"] == want.label
        for label, score in want.scores.items():
            assert doc["scores"][label] == pytest.approx(score, abs=1e-6)

    lib = subprocess.run(
        [str(light_venv / "bin/python"), "-c",
         "import json, sys\n"
         "from emotion2vec_serving.clients import EmotionClient\n"
         "with EmotionClient(sys.argv[1]) as c:\n"
         "    r = c.recognize(sys.argv[2], timeout=30)\n"
         "print(json.dumps({'label': r.label, 'scores': r.scores}))\n",
         server.target, str(audio.wav)],
        capture_output=True, text=True, env=_env(), cwd=light_venv, timeout=120, check=False,
    )  # fmt: skip
    assert lib.returncode == 0, lib.stderr
    got = json.loads(lib.stdout)
    want = expected[audio.wav.name]
    assert got["label"] == want.label
    assert got["scores"] == pytest.approx(dict(want.scores), abs=1e-6)

