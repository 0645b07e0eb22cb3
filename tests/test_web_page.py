"""The page's details a newcomer meets, in the browser (Chromium via Playwright; skipped with the
reason where either is missing): what is indexed and example queries on the start page, the
empty-query message, tiles that keep the video's shape and say its name and length, a timeline
with a time axis, a labelled unstretched scale and visible band labels, a stale result's message
kept as the server wrote it, and `/docs` rendering the API's operations."""

from __future__ import annotations

import json
import re
from urllib.parse import quote

from test_web_browser import TOKEN, browser, chromium, page, server, world  # noqa: F401


def test_start_page_says_what_is_indexed_and_offers_examples(server, world, page):  # noqa: F811
    page.goto(f"{server}/?token={TOKEN}")
    page.wait_for_selector("#examples .example")
    videos = page.evaluate(
        f"async () => (await (await fetch('/api/info?token={TOKEN}')).json()).videos"
    )
    about = page.locator("#indexed").inner_text()
    assert re.fullmatch(rf"{videos} videos \(\d+\u00a0min\) indexed with \S.*\.", about), about
    examples = page.locator("#examples .example")
    captions = {c["caption"] for c in world["captions"]}
    assert 1 <= examples.count() <= 8 and examples.first.inner_text() in captions
    text = examples.first.inner_text()
    examples.first.click()  # an example runs as a search
    page.wait_for_selector("[data-video]")
    assert page.input_value("#q") == text and page.locator("#about").is_hidden()


def test_a_blank_query_says_what_to_type(server, page):  # noqa: F811
    page.goto(f"{server}/?token={TOKEN}")
    page.fill("#q", "    ")
    page.get_by_role("button", name="Search").click()
    assert page.locator("#status").inner_text() == (
        "Type a sentence describing what happens in the video."
    )
    assert page.locator("[data-video]").count() == 0


def test_tiles_keep_the_shape_and_name_the_video(server, world, page):  # noqa: F811
    page.goto(f"{server}/?q={quote(world['captions'][0]['caption'])}&token={TOKEN}")
    page.wait_for_selector("[data-video]")
    tile = page.locator("[data-video]").first
    assert tile.get_attribute("title").endswith(".mp4")  # the full path on hover
    assert tile.get_attribute("title").startswith("/")
    detail = tile.locator(".detail").inner_text()
    assert "4.0\u00a0s" in detail  # the length, its unit never wrapped alone (nbsp)
    fit = page.evaluate("getComputedStyle(document.querySelector('.hit img')).objectFit")
    assert fit == "contain"  # a square or tall video is not cropped
    assert page.locator("label[for=k]").inner_text() == "Results"  # a visible label


def test_timeline_has_an_axis_a_labelled_scale_and_band_labels(server, world, page):  # noqa: F811
    page.goto(f"{server}/?q={quote(world['captions'][0]['caption'])}&token={TOKEN}")
    page.wait_for_selector("[data-video]")
    page.locator("[data-video]").first.click()
    page.wait_for_selector("#bands .band")
    ticks = page.locator("#axis span").all_inner_texts()
    assert ticks[0] == "0\u00a0s" and len(ticks) >= 3
    legend = page.locator("#legend").inner_text()
    assert legend.startswith("Curve: query-clip cosine per ")  # what the curve is, with its unit
    hi = float(page.locator("#scale-hi").inner_text())
    lo = float(page.locator("#scale-lo").inner_text())
    assert hi - lo >= 0.2 - 1e-9  # a flat curve is drawn flat: the scale spans at least 0.2
    for band in page.locator("#bands .band").all():
        label = band.inner_text()
        assert label.startswith("#") and "–" in label and "NaN" not in label  # time range, score
        assert float(band.get_attribute("data-start")) < float(band.get_attribute("data-end"))


def test_a_failed_localization_keeps_the_servers_message(server, world, page):  # noqa: F811
    """When /api/localize fails (here: the index was updated since the search), the page shows the
    server's own sentence, draws no band, and plays the search's match instead."""
    said = "the index was updated since this result was found (version 1, now 2): search again"
    page.route("**/api/localize*", lambda route: route.fulfill(
        status=409, content_type="application/json", body=json.dumps({"error": said})))  # fmt: skip
    page.goto(f"{server}/?q={quote(world['captions'][0]['caption'])}&token={TOKEN}")
    page.wait_for_selector("[data-video]")
    page.locator("[data-video]").first.click()
    page.wait_for_function(
        "() => document.getElementById('moment-info').textContent.startsWith('Localizing failed')"
    )
    text = page.locator("#moment-info").inner_text()
    assert said in text and "Playing the search's match" in text, text
    assert page.locator("#bands .band").count() == 0


def test_docs_render_the_operations(server, page):  # noqa: F811
    """/docs is Swagger UI 5 reading the OpenAPI 3.1 document: it lists the operations (Swagger
    UI 4 showed "Unable to render this definition" instead)."""
    page.goto(f"{server}/docs?token={TOKEN}")
    page.wait_for_selector(".opblock-summary-path")
    paths = set(page.locator(".opblock-summary-path").all_inner_texts())
    assert {"/api/search", "/api/localize", "/api/info", "/healthz"} <= {p.strip() for p in paths}
    assert page.locator("text=Unable to render this definition").count() == 0
