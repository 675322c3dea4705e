"""The page in a real headless browser: Debian's chromium driven by Playwright (never ``playwright install``:
its own browser download is unreachable; ``.ci/run`` installs the system chromium).

Every test also checks that no request left for another origin and that the console stayed free of errors
(apart from the "Failed to load resource" line Chromium logs for each HTTP error the test provokes).
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from emotion2vec_serving.clients import EmotionClient
from emotion2vec_serving.clients.schema import recognition_json
from tests.support.web import MAX_AUDIO_S, MAX_QUEUE_AUDIO_S, WebServer, same_result, tone_file

playwright_api = pytest.importorskip("playwright.sync_api", reason="the dev extra installs playwright")
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian's chromium is not installed")

ROOT = Path(__file__).resolve().parents[3]
#: The README's picture. Tests write their screenshot to a temporary folder; it replaces this committed
#: file only when asked (``EMOTION_UPDATE_SCREENSHOT=1 python -m pytest tests/server/http/test_page.py``), so
#: a test run never rewrites a tracked file.
README_SCREENSHOT = ROOT / "docs" / "web.png"
expect = playwright_api.expect
TIMEOUT_MS = 30_000


class Watch:
    """A page with its network and console log."""

    def __init__(self, page: Any, origin: str) -> None:
        self.page = page
        self.origin = origin
        self.requests: list[str] = []
        self.console_errors: list[str] = []
        page.on("request", lambda r: self.requests.append(r.url))
        page.on("console", lambda m: self.console_errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: self.console_errors.append(f"page error: {e}"))

    def check(self, allowed_statuses: tuple[int, ...] = ()) -> None:
        elsewhere = [u for u in self.requests
                     if not (u.startswith(self.origin + "/") or u.startswith(("blob:", "data:")))]
        assert not elsewhere, f"requests to another origin: {elsewhere}"
        expected = re.compile(r"Failed to load resource: the server responded with a status of "
                              rf"({'|'.join(map(str, allowed_statuses)) or 'none'})\b")
        unexpected = [m for m in self.console_errors if not expected.search(m)]
        assert not unexpected, f"console errors: {unexpected}"


@pytest.fixture(scope="module")
def browser(speech_wav: Path) -> Iterator[Any]:
    args = ["--no-sandbox", "--disable-gpu", "--headless", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--no-first-run",
            # Live mode: the microphone is this WAV file, and the permission prompt answers itself.
            "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
            f"--use-file-for-fake-audio-capture={speech_wav}"]
    with playwright_api.sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=CHROMIUM, args=args)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def open_page(browser: Any) -> Iterator[Any]:
    contexts: list[Any] = []

    def make(server: WebServer, width: int = 1100, height: int = 900) -> Watch:
        context = browser.new_context(viewport={"width": width, "height": height}, accept_downloads=True)
        context.set_default_timeout(TIMEOUT_MS)
        contexts.append(context)
        watch = Watch(context.new_page(), server.base)
        watch.page.goto(server.url("/"))
        return watch

    yield make
    for context in contexts:
        context.close()


def _shrink_png(path: Path) -> None:
    """A 256-colour palette keeps the committed screenshot small (text and flat colours survive it)."""
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover - matplotlib (dev extra) brings Pillow
        return
    with Image.open(path) as image:
        small = image.convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT)
    small.save(path, optimize=True)


def _shown_scores(card: Any) -> dict[str, float]:
    rows = card.locator(".bars tr")
    return {rows.nth(i).get_attribute("data-label"): float(rows.nth(i).get_attribute("data-score"))
            for i in range(rows.count())}


def test_files_of_every_format_show_what_recognize_returns(
    open_server: WebServer, upload_files: dict[str, bytes], open_page: Any
) -> None:
    watch = open_page(open_server)
    page = watch.page
    files = dict(upload_files)
    # Longer than one model pass: the server cuts it into segments, the page draws their timeline.
    files["long.flac"] = tone_file("flac", 35.0, seed=9, rate=16000)
    with EmotionClient(open_server.target) as client:
        info = client.model_info()
        expected = {name: client.recognize(data) for name, data in files.items()}
    assert len(expected["long.flac"].segments) >= 2
    expect(page.locator("#model-card .model-name")).to_have_text(info.model.name)
    expect(page.locator("#model-card")).to_contain_text(info.model.precision)
    expect(page.locator("#model-card")).to_contain_text(info.execution_provider)
    banner = page.locator("#demo-banner")
    if info.model.untrained:
        expect(banner).to_be_visible()
    else:
        expect(banner).to_be_hidden()

    page.set_input_files("#files", [{"name": name, "mimeType": "application/octet-stream", "buffer": data}
                                    for name, data in files.items()])
    expect(page.locator(".result[data-state=done]")).to_have_count(len(files))
    zh = {lb.name: lb.name_zh for lb in info.labels}
    for name, result in expected.items():
        card = page.locator(f'.result[data-file="{name}"]')
        assert card.get_attribute("data-emotion") == result.label
        assert float(card.get_attribute("data-confidence")) == pytest.approx(result.confidence, abs=1e-6)
        shown = _shown_scores(card)
        assert list(shown) == list(result.scores), name
        for label, score in result.scores.items():
            assert shown[label] == pytest.approx(score, abs=1e-6), (name, label)
            row = card.locator(f'.bars tr[data-label="{label}"]')
            expect(row.locator("td.zh")).to_have_text(zh[label])
        expect(card.locator(".top-label")).to_have_text(f"{result.label} · {result.label_zh}")
        expect(card.locator(".meta")).to_contain_text(f"{result.duration_s:.2f} s of audio")
        expect(card.locator(".timeline rect.segment")).to_have_count(len(result.segments))
    watch.check()


def test_frame_curve_hover_and_downloads_match_the_api(
    open_server: WebServer, open_page: Any, tmp_path: Path
) -> None:
    watch = open_page(open_server, width=1000, height=1240)
    page = watch.page
    page.check("input[name=granularity][value=frame]")
    page.check("#embedding")
    page.click("#example")
    card = page.locator('.result[data-file="example.ogg"]')
    expect(card).to_have_attribute("data-state", "done")
    example = (ROOT / "server" / "http" / "static" / "example.ogg").read_bytes()
    with EmotionClient(open_server.target) as client:
        expected = client.recognize(example, granularity="frame", embedding=True)
    assert expected.embedding is not None

    chart = card.locator("svg.curve-chart")
    assert int(chart.get_attribute("data-frames")) == len(expected.frames)
    drawn = [e.get_attribute("data-label") for e in chart.locator("polyline.curve").all()]
    scores = expected.frame_scores
    assert drawn == [name for i, name in enumerate(expected.labels) if scores[:, i].max() > 0]
    for line in chart.locator("polyline.curve").all():  # one point per frame
        assert len(line.get_attribute("points").split()) == len(expected.frames)
    area = card.locator(".hover-area")
    box = area.bounding_box()
    assert box is not None
    area.hover(position={"x": box["width"] * 0.45, "y": box["height"] / 2})
    tip = card.locator(".tooltip")
    expect(tip).to_be_visible()
    frame = expected.frames[int(tip.get_attribute("data-frame"))]
    expect(tip).to_contain_text(f"{frame.start_s:.2f}–{frame.end_s:.2f} s: {frame.label}")

    with page.expect_download() as result_download:
        card.locator(".dl-json").click()
    saved = json.loads(Path(result_download.value.path()).read_text(encoding="utf-8"))
    assert result_download.value.suggested_filename == "result.json"
    same_result(saved, recognition_json(expected, input_name="example.ogg"))
    with page.expect_download() as npy_download:
        card.locator(".dl-npy").click()
    assert npy_download.value.suggested_filename == "embedding.npy"
    npy_path = tmp_path / "embedding.npy"
    npy_download.value.save_as(npy_path)
    vector = np.load(npy_path)
    assert vector.dtype == np.float32 and vector.shape == expected.embedding.shape
    np.testing.assert_allclose(vector, expected.embedding, atol=1e-6)

    # The picture for the README: the page with this result and the tooltip open (a viewport shot: a
    # full-page one re-lays the page out, which closes the tooltip).
    area.hover(position={"x": box["width"] * 0.45, "y": box["height"] / 2})
    expect(tip).to_be_visible()
    shot = tmp_path / "web.png"
    page.screenshot(path=str(shot))
    _shrink_png(shot)
    assert shot.stat().st_size > 10_000  # a real picture of the page, palette-shrunk
    if os.environ.get("EMOTION_UPDATE_SCREENSHOT") == "1":
        shutil.copyfile(shot, README_SCREENSHOT)
    watch.check()


def test_live_microphone_segments_appear_while_the_audio_plays(
    open_server: WebServer, open_page: Any
) -> None:
    watch = open_page(open_server)
    page = watch.page
    expect(page.locator("#model-card .model-name")).to_be_visible()
    page.click("#tab-live")
    page.click("#live-start")
    panel = page.locator("#panel-live")
    segments = page.locator("#live-segments li.segment")
    expect(segments.first).to_be_visible()
    # Still recording: the segment arrived while the (fake) microphone was playing, not at the end.
    assert panel.get_attribute("data-state") == "listening"
    expect(page.locator("#live-summary")).to_have_attribute("data-final", "false")
    first = segments.first
    assert float(first.get_attribute("data-end")) > float(first.get_attribute("data-start")) >= 0.0
    expect(segments).not_to_have_count(1)  # a second segment, still while listening
    page.click("#live-stop")
    summary = page.locator("#live-summary")
    expect(summary).to_have_attribute("data-final", "true")
    assert int(summary.get_attribute("data-segments")) == segments.count() >= 2
    assert panel.get_attribute("data-state") == "done"
    watch.check()


def test_errors_show_next_to_their_file_and_the_page_stays_usable(
    strict_server: WebServer, open_page: Any
) -> None:
    watch = open_page(strict_server)
    page = watch.page
    # No token yet: the model card is refused, a file is refused, and the token box appears.
    expect(page.locator("#auth")).to_be_visible()
    first = tone_file("wav", 1.0, seed=7)
    page.set_input_files("#files", [{"name": "first.wav", "mimeType": "audio/wav", "buffer": first}])
    first_card = page.locator('.result[data-file="first.wav"]')
    expect(first_card.locator(".error")).to_contain_text("Not authorised")
    assert first_card.get_attribute("data-status") == "401"
    page.fill("#token", strict_server.token or "")
    page.click("#auth-form button[type=submit]")
    expect(page.locator("#auth")).to_be_hidden()
    expect(page.locator("#model-card .model-name")).to_be_visible()
    expect(first_card).to_have_attribute("data-state", "done")  # the refused file went again

    files = {
        "notes.txt": b"not audio",
        "broken.mp3": b"ID3 this is not an mp3 at all" * 20,
        "long.flac": tone_file("flac", MAX_AUDIO_S + 2.0, rate=16000),
        "busy.wav": tone_file("wav", MAX_QUEUE_AUDIO_S + 1.0, rate=16000),
        "good.wav": tone_file("wav", 1.0, seed=3),
    }
    page.set_input_files("#files", [{"name": n, "mimeType": "application/octet-stream", "buffer": d}
                                    for n, d in files.items()])

    def card(name: str) -> Any:
        return page.locator(f'.result[data-file="{name}"]')

    expect(card("good.wav")).to_have_attribute("data-state", "done")
    expected_errors = {
        "notes.txt": ("Unsupported file type", None),
        "broken.mp3": ("could not use this file", "400"),
        "long.flac": ("too long", "400"),
        "busy.wav": ("busy", "429"),
    }
    for name, (text, status) in expected_errors.items():
        expect(card(name)).to_have_attribute("data-state", "error")
        expect(card(name).locator(".error")).to_contain_text(text)
        if status is not None:
            assert card(name).get_attribute("data-status") == status
    expect(card("busy.wav").locator(".retry-button")).to_be_visible()  # busy: worth trying again
    expect(card("broken.mp3").locator(".retry-button")).to_be_hidden()
    # Still usable after all that.
    page.set_input_files("#files", [{"name": "again.wav", "mimeType": "audio/wav",
                                     "buffer": tone_file("wav", 1.5, seed=4)}])
    expect(card("again.wav")).to_have_attribute("data-state", "done")
    watch.check(allowed_statuses=(400, 401, 429))


def test_split_channels_show_one_row_per_channel(open_server: WebServer, open_page: Any) -> None:
    """A long stereo call with "split channels" ticked: one row per channel, each with the scores the API
    gives that channel and its own timeline of segments (issue 21)."""
    from tests.support.audio import encode, make_signal

    stereo = make_signal(35.0, 16000, 2, seed=9)
    stereo[:, 1] *= 0.5
    data = encode(stereo, 16000, "flac")
    with EmotionClient(open_server.target) as client:
        expected = client.recognize(data, channels="split")
    assert len(expected.channels) == 2 and all(len(c.segments) >= 2 for c in expected.channels)
    watch = open_page(open_server)
    page = watch.page
    page.check("#split-channels")
    page.set_input_files("#files", [{"name": "call.flac", "mimeType": "audio/flac", "buffer": data}])
    card = page.locator('.result[data-file="call.flac"][data-state=done]')
    expect(card).to_have_count(1)
    assert card.get_attribute("data-channels") == "2"
    rows = card.locator(".channels .channel")
    expect(rows).to_have_count(2)
    for i, ch in enumerate(expected.channels):
        row = rows.nth(i)
        assert row.get_attribute("data-emotion") == ch.label
        shown = _shown_scores(row)
        assert list(shown) == list(ch.scores)
        for label, score in ch.scores.items():
            assert shown[label] == pytest.approx(score, abs=1e-6)
        expect(row.locator(".timeline rect.segment")).to_have_count(len(ch.segments))
    watch.check()
