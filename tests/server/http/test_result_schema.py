"""One ``result.json`` schema (issue 20): the same recording recognised through the web API (``POST
/v1/recognize``) and through the CLI (``emotion-client recognize`` against the same real server process)
gives the same JSON: same keys in the same order, same structure, values within 1e-5 (timings aside: each
call has its own). Both are written by ``clients/schema.py``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from emotion2vec_serving.clients.cli import main
from tests.support.web import WebServer, http, tone_file

TOL = 1e-5


def _same(http_doc: Any, cli_doc: Any, path: str = "") -> None:
    if isinstance(cli_doc, dict):
        assert isinstance(http_doc, dict), path
        assert list(http_doc) == list(cli_doc), (path, list(http_doc), list(cli_doc))
        for key in cli_doc:
            if key == "timing":  # per call; the same fields
                assert list(http_doc[key]) == list(cli_doc[key]), path
            elif key != "input":
                _same(http_doc[key], cli_doc[key], f"{path}.{key}")
    elif isinstance(cli_doc, list):
        assert isinstance(http_doc, list) and len(http_doc) == len(cli_doc), path
        for i, (h, c) in enumerate(zip(http_doc, cli_doc, strict=True)):
            _same(h, c, f"{path}[{i}]")
    elif isinstance(cli_doc, float):
        assert isinstance(http_doc, (int, float)) and http_doc == pytest.approx(cli_doc, abs=TOL), path
    else:
        assert type(http_doc) is type(cli_doc) and http_doc == cli_doc, path


@pytest.mark.parametrize("long", [False, True], ids=["one-pass", "long-recording"])
def test_the_web_api_and_the_cli_write_the_same_result_json(
    open_server: WebServer, tmp_path: Path, capsys: pytest.CaptureFixture[str], long: bool
) -> None:
    if long:  # longer than one model pass: segments
        card = http("GET", open_server.url("/v1/model")).json()
        audio, name = tone_file("flac", card["max_duration_s"] + 5.0, seed=7, rate=16000), "long.flac"
    else:
        audio, name = tone_file("wav", 2.0, seed=3), "short.wav"
    source = tmp_path / name
    source.write_bytes(audio)

    out = tmp_path / "outputs"
    code = main(["--target", open_server.target, "recognize", str(source), "--granularity", "frame",
                 "--output-dir", str(out), "--no-progress"])
    assert code == 0
    (folder,) = out.iterdir()
    cli_doc = json.loads((folder / "result.json").read_text(encoding="utf-8"))
    reply = http("POST", open_server.url(f"/v1/recognize?granularity=frame&name={name}"), audio)
    assert reply.status == 200, reply.body[:300]
    http_doc = reply.json()
    assert http_doc["input"] == name and cli_doc["input"] == str(source)
    assert ("segments" in cli_doc) is long and http_doc["frames"]
    _same(http_doc, cli_doc)

    # The JSON lines of --json (with the embedding) against the API's embedding=true.
    capsys.readouterr()
    code = main(["--target", open_server.target, "recognize", str(source), "--json", "--embedding",
                 "--no-progress"])
    assert code == 0
    cli_line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    reply = http("POST", open_server.url(f"/v1/recognize?embedding=true&name={name}"), audio)
    assert reply.status == 200
    http_doc = reply.json()
    assert list(http_doc)[-1] == "embedding" and len(http_doc["embedding"]) > 0
    _same(http_doc, cli_line)
