"""`vr serve` in a real browser: Debian's Chromium, headless, driven by Playwright.

The server is the real command (`python -m video_retrieval.cli serve`, with a token, on a free
loopback port) over a synthetic collection plus one video per held-out codec. Without Chromium or
Playwright every test here is skipped with the reason (pytest's ``-ra`` prints it).
Set ``VR_DOCS_SCREENSHOT=docs/serve.png`` to copy the search page's screenshot there.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from urllib.parse import quote

import httpx
import pytest
from _serve_util import CODEC_FPS, HELD_OUT, shared_serve_index

TOKEN = "browser-test-token"
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip


def chromium_or_skip() -> str:
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        pytest.skip("browser tests need Playwright: pip install -e '.[dev]'")
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        pytest.skip("browser tests need Chromium: apt-get install -y chromium (as .ci/run does)")
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def chromium():
    return chromium_or_skip()


@pytest.fixture(scope="module")
def world(chromium, tmp_path_factory):
    return shared_serve_index(tmp_path_factory)


@pytest.fixture(scope="module")
def server(world, tmp_path_factory):
    """`vr serve` as a user starts it; yields its base URL."""
    port = free_port()
    log = tmp_path_factory.mktemp("serve_log") / "serve.log"
    cache = tmp_path_factory.mktemp("browser_cache")
    cmd = [
        sys.executable, "-m", "video_retrieval.cli", "serve", "--index", str(world["index"]),
        "--port", str(port), "--token", TOKEN, "--cache-dir", str(cache),
    ]  # fmt: skip
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            if proc.poll() is not None:
                pytest.fail(f"vr serve exited with {proc.returncode}: {log.read_text()[-2000:]}")
            try:
                if httpx.get(f"{base}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"vr serve did not answer in 180 s: {log.read_text()[-2000:]}")
            time.sleep(0.3)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def browser(chromium):
    from playwright.sync_api import sync_playwright

    pw = sync_playwright().start()
    b = pw.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
    try:
        yield b
    finally:
        b.close()
        pw.stop()


@pytest.fixture
def page(browser):
    ctx = browser.new_context(viewport={"width": 1100, "height": 900})
    ctx.set_default_timeout(90_000)  # a loaded 2-core machine can be slow; nothing here is timed
    p = ctx.new_page()
    errors = []
    p.on("pageerror", lambda exc: errors.append(str(exc)))
    yield p
    ctx.close()
    assert not errors, errors  # no uncaught JavaScript error on the page


def frame_of(rgb) -> int:
    """The frame index an index-coloured frame carries (tests/_video_util.index_frames)."""
    return round(rgb[0] / 8) + 32 * round(rgb[1] / 8)


def test_search_page_shows_hits_and_plays_the_moment(server, world, page, tmp_path):
    cap = world["captions"][0]
    page.goto(f"{server}/?q={quote(cap['caption'])}&k=6&token={TOKEN}")
    page.wait_for_selector("[data-video]")
    hits = page.locator("[data-video]")
    assert hits.count() == 6 and page.input_value("#k") == "6"
    assert hits.first.get_attribute("data-video") == str(cap["id"])  # its own video first
    assert page.input_value("#q") == cap["caption"]  # the URL reproduces the search
    page.wait_for_function(  # every thumbnail decoded
        "() => [...document.querySelectorAll('.hit img')].every(i => i.complete && i.naturalWidth)"
    )
    page.evaluate(  # where playback starts
        """() => { const v = document.getElementById('video'); window.__playing = [];
                   v.addEventListener('playing', () => window.__playing.push(v.currentTime)); }"""
    )
    hits.first.click()
    # a 4-s clip the caption describes as a whole is played whole, its best moment named
    page.wait_for_selector("#bands .band")
    text = page.locator("#moment-info").inner_text()
    assert text.startswith("Best moment ") and "zero-shot" in text, text
    assert text.endswith("playing the whole clip."), text
    page.wait_for_function("() => window.__playing.length > 0")
    assert page.evaluate("window.__playing[0]") < 0.3
    points = page.get_attribute("#saliency", "points")
    assert len(points.split()) >= 2
    # a band plays its moment: it seeks to the start and pauses at the end
    band = page.locator("#bands .band").first
    band_start, band_end = (
        float(band.get_attribute("data-start")),
        float(band.get_attribute("data-end")),
    )
    assert f"{band_start:.1f}" in band.get_attribute("aria-label")
    page.evaluate("() => { document.getElementById('video').pause(); }")
    band.click()
    page.wait_for_function(
        "s => { const v = document.getElementById('video'); return !v.seeking && !v.paused && "
        "v.currentTime >= s - 0.05; }",
        arg=band_start,
    )
    page.wait_for_function("() => document.getElementById('video').paused")
    stop = page.evaluate("document.getElementById('video').currentTime")
    assert band_start < stop <= band_end + 0.35, (stop, band_end)  # timeupdate: 0.25 s
    shot = tmp_path / "serve.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000
    if os.environ.get("VR_DOCS_SCREENSHOT"):
        shutil.copyfile(shot, os.environ["VR_DOCS_SCREENSHOT"])


def test_search_form_updates_the_url(server, page):
    page.goto(f"{server}/?token={TOKEN}")
    page.get_by_label("Describe what happens in the video").fill("a red circle grows")
    page.get_by_role("button", name="Search").click()
    page.wait_for_selector("[data-video]")
    assert "q=a+red+circle+grows" in page.url and f"token={TOKEN}" in page.url
    assert page.locator("#status").inner_text().startswith("10 results for")  # the default k


def test_page_fits_a_phone_screen(server, world, browser):
    ctx = browser.new_context(viewport={"width": 375, "height": 740}, device_scale_factor=2)
    ctx.set_default_timeout(90_000)
    page = ctx.new_page()
    try:
        page.goto(f"{server}/?q={quote(world['captions'][1]['caption'])}&token={TOKEN}")
        page.wait_for_selector("[data-video]")
        assert page.evaluate("document.documentElement.scrollWidth") <= 375  # no sideways scroll
        cols = page.evaluate(
            "getComputedStyle(document.getElementById('hits')).gridTemplateColumns.split(' ').length"
        )
        assert cols == 2
        page.locator("[data-video]").first.click()
        page.wait_for_selector("#bands .band")
        box = page.locator("#video").bounding_box()
        assert box["width"] <= 375
    finally:
        ctx.close()


def test_page_reports_a_missing_token(server, page):
    page.goto(f"{server}/?q=a+red+circle")
    page.wait_for_function(
        "() => document.getElementById('status').textContent.startsWith('Error')"
    )
    assert "needs its token" in page.locator("#status").inner_text()


PLAY_AND_SEEK = """async (src) => {
  const v = document.createElement('video');
  v.muted = true;
  v.preload = 'auto';
  document.body.append(v);
  await new Promise((ok, bad) => {
    v.onloadeddata = ok;
    v.onerror = () => bad(new Error('media error ' + (v.error && v.error.code)));
    v.src = src;
  });
  const grab = () => {
    const c = document.createElement('canvas');
    c.width = v.videoWidth; c.height = v.videoHeight;
    const g = c.getContext('2d');
    g.drawImage(v, 0, 0);
    const d = g.getImageData(c.width >> 1, c.height >> 1, 1, 1).data;
    return [d[0], d[1], d[2]];
  };
  // seeked fires before the new frame is painted on a loaded machine: wait for both
  const seek = (t) => Promise.all([
    new Promise((ok) => { v.onseeked = () => ok(); }),
    new Promise((ok) => v.requestVideoFrameCallback(() => ok())),
    Promise.resolve().then(() => { v.currentTime = t; }),
  ]);
  await seek(2.0);
  const at2 = grab();
  await seek(0.6);
  const at06 = grab();
  await v.play();
  await new Promise((ok) => setTimeout(ok, 800));
  const played = v.currentTime;
  v.pause();
  return {at2, at06, played, duration: v.duration, width: v.videoWidth};
}"""


@pytest.mark.parametrize("name", list(HELD_OUT))
def test_every_held_out_codec_plays_and_seeks(server, world, page, name):
    vid = world["codec_ids"][name]
    page.goto(f"{server}/?token={TOKEN}")
    out = page.evaluate(PLAY_AND_SEEK, f"/media/{vid}?token={TOKEN}")
    assert out["width"] == 128 and abs(out["duration"] - 4.0) < 0.05
    assert frame_of(out["at2"]) == round(2.0 * CODEC_FPS)  # the frame shown at 2.0 s
    assert frame_of(out["at06"]) == round(0.6 * CODEC_FPS)  # and after seeking back
    assert out["played"] > 0.6  # playback moved on from the seek point


# -- search by example, more like this, download this moment (issue 30) --------------------------
DROP_IMAGE = """async ([b64, how, text]) => {
  const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
  const file = new File([bytes], 'grab.png', { type: 'image/png' });
  const dt = new DataTransfer();
  dt.items.add(file);
  if (how === 'drop') {
    const form = document.getElementById('search-form');
    form.dispatchEvent(new DragEvent('dragover', { dataTransfer: dt, bubbles: true, cancelable: true }));
    form.dispatchEvent(new DragEvent('drop', { dataTransfer: dt, bubbles: true, cancelable: true }));
  } else {
    const q = document.getElementById('q');
    q.value = text;
    q.dispatchEvent(new ClipboardEvent('paste', { clipboardData: dt, bubbles: true, cancelable: true }));
  }
}"""

PLAY_CLIP = """async (src) => {
  const v = document.createElement('video');
  v.muted = true;
  document.body.append(v);
  await new Promise((ok, bad) => {
    v.onloadeddata = ok;
    v.onerror = () => bad(new Error('media error ' + (v.error && v.error.code)));
    v.src = src;
  });
  await v.play();
  await new Promise((ok) => v.addEventListener('ended', ok, { once: true }));
  return { duration: v.duration, width: v.videoWidth, ended: v.ended };
}"""


def frame_png_b64(path, t: float) -> str:
    import base64
    import io

    from PIL import Image

    from video_retrieval.media.decode import load_frames

    buf = io.BytesIO()
    Image.fromarray(load_frames(path, num_frames=1, start=t, end=t + 0.005).pixels[0]).save(
        buf, format="PNG"
    )
    return base64.b64encode(buf.getvalue()).decode()


def test_a_dropped_frame_finds_its_video_and_the_moment_downloads(server, world, page):
    from video_retrieval.index.store import IndexStore

    cap = world["captions"][3]
    path = IndexStore.open(world["index"]).videos[cap["id"]]["path"]
    page.goto(f"{server}/?token={TOKEN}")
    page.evaluate(DROP_IMAGE, [frame_png_b64(path, 2.3), "drop", ""])
    page.wait_for_selector("[data-video]")
    assert page.locator("[data-video]").first.get_attribute("data-video") == str(cap["id"])
    assert "“image grab.png”" in page.locator("#status").inner_text()
    assert page.locator("#query-image").is_visible()
    page.locator("[data-video]").first.click()
    page.wait_for_function("() => document.getElementById('moment-info').textContent.length > 0")
    assert "matched frame at" in page.locator("#moment-info").inner_text()
    link = page.locator("#download")
    assert link.is_visible() and link.inner_text().startswith("Download this moment")
    start, end = float(link.get_attribute("data-start")), float(link.get_attribute("data-end"))
    href = link.get_attribute("href")
    assert f"media/{cap['id']}/clip?start=" in href and f"token={TOKEN}" in href
    out = page.evaluate(PLAY_CLIP, href)  # the exported moment plays to its end in the browser
    assert out["ended"] and out["width"] > 0
    assert abs(out["duration"] - (end - start)) <= 1 / 8 + 0.02, (out, start, end)  # 8 fps
    # pasted with a sentence in the box: a text + image query
    page.evaluate(DROP_IMAGE, [frame_png_b64(path, 1.0), "paste", cap["caption"]])
    page.wait_for_function(
        "() => document.getElementById('status').textContent.includes('+ image grab.png')"
    )
    assert page.locator("[data-video]").first.get_attribute("data-video") == str(cap["id"])


def test_more_like_this_leaves_its_video_out(server, world, page):
    cap = world["captions"][0]
    page.goto(f"{server}/?q={quote(cap['caption'])}&k=5&token={TOKEN}")
    page.wait_for_selector("[data-like]")
    source = page.locator("[data-like]").first.get_attribute("data-like")
    page.locator("[data-like]").first.click()
    page.wait_for_function("() => document.getElementById('status').textContent.includes('like')")
    page.wait_for_selector("[data-video]")
    shown = [h.get_attribute("data-video") for h in page.locator("[data-video]").all()]
    assert len(shown) == 5 and source not in shown
    assert f"like={source}" in page.url and "q=" not in page.url
    page.reload()  # the URL reproduces it
    page.wait_for_selector("[data-video]")
    again = [h.get_attribute("data-video") for h in page.locator("[data-video]").all()]
    assert again == shown
