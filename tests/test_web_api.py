"""`vr serve`'s JSON API through FastAPI's TestClient: every endpoint, every bad input, the token,
Range requests, proxies of non-playable codecs, thumbnails, and the same answers as the library."""

from __future__ import annotations

import io
import json
import os
import re
import threading
from pathlib import Path

import av
import numpy as np
import pytest
from _serve_util import CODEC_FRAMES, HELD_OUT, shared_serve_index
from _video_util import frame_ids
from fastapi.testclient import TestClient

from video_retrieval.errors import UserError
from video_retrieval.web.app import create_app
from video_retrieval.web.config import MAX_BATCH, MAX_K, MAX_QUERY_CHARS, ServeConfig, is_loopback
from video_retrieval.web.media import DiskCache
from video_retrieval.web.services import index_clip_features, zero_shot_clip_len
from video_retrieval.web.state import load_state

TOKEN = "s3cret-token-123"
BASE = "http://127.0.0.1:8000"  # a token-less server answers requests addressed to loopback only


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return shared_serve_index(tmp_path_factory)


@pytest.fixture(scope="module")
def state(world, tmp_path_factory):
    cache = tmp_path_factory.mktemp("serve_cache")
    return load_state(ServeConfig(index=world["index"], cache_dir=cache))


@pytest.fixture(scope="module")
def client(state):
    with TestClient(create_app(state=state), base_url=BASE) as c:
        yield c


@pytest.fixture(scope="module")
def token_client(state):
    cfg = ServeConfig(index=state.config.index, cache_dir=state.config.cache_dir, token=TOKEN)
    with TestClient(create_app(cfg, state=state), base_url=BASE) as c:
        yield c


def error_of(r, status: int) -> str:
    assert r.status_code == status, (r.status_code, r.text)
    assert r.headers["content-type"].startswith("application/json")
    body = r.json()
    assert set(body) == {"error"} and "\n" not in body["error"]
    return body["error"]


# -- meta -----------------------------------------------------------------------------------------
def test_healthz_and_info(client, state):
    assert client.get("/healthz").json() == {"status": "ok", "videos": len(state.index)}
    info = client.get("/api/info").json()
    assert info["videos"] == len(state.index) == 8 + len(HELD_OUT)
    assert (
        info["rerankers"] == ["auto", "none", "cliprerank", "query_scored", "mean"]
        and info["default_rerank"] == "auto"
    )
    assert info["auto_rerank"] == "none"  # as vr search: the demo index is pooled by seqTransf
    assert info["limits"] == {
        "max_query_chars": MAX_QUERY_CHARS, "max_k": MAX_K, "max_batch": MAX_BATCH, "max_top": 20,
        "max_images": 8, "max_upload_bytes": 32 * 2**20, "max_clip_seconds": 300.0,
    }  # fmt: skip
    assert info["localize_method"] == "zero_shot"
    assert info["fingerprint"] == state.index.fingerprint


def test_openapi_documents_every_endpoint(client):
    spec = client.get("/openapi.json").json()
    assert {"/healthz", "/api/info", "/api/search", "/api/localize", "/media/{vid}",
            "/thumb/{vid}", "/api/reload"} <= set(spec["paths"])  # fmt: skip
    assert set(spec["paths"]["/api/search"]) == {"get", "post"}
    q = next(p for p in spec["paths"]["/api/search"]["get"]["parameters"] if p["name"] == "q")
    text = next(x for x in q["schema"].get("anyOf", [q["schema"]]) if x.get("type") == "string")
    assert text["maxLength"] == MAX_QUERY_CHARS  # q is optional since like=ID (more like this)
    assert client.get("/docs").status_code == 200


def test_docs_page_is_served_without_a_cdn(client, token_client):
    """/docs loads Swagger UI 5 from the app (swagger-ui-py), so it works offline."""
    html = client.get("/docs").text
    srcs = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert "/static/swagger/swagger-ui-bundle.js" in srcs
    assert "/static/swagger/swagger-ui.css" in srcs
    assert not [u for u in srcs if u.startswith(("http:", "https:", "//"))], srcs
    assert "url: '/openapi.json'" in html
    for path in srcs:  # the script, the stylesheet and the icon
        r = client.get(path)
        assert r.status_code == 200 and len(r.content) > (100 if path.endswith(".png") else 10_000)
    assert "SwaggerUIBundle" in client.get("/static/swagger/swagger-ui-bundle.js").text
    # with a token: the page passes it on to its spec request; the assets need none
    page = token_client.get("/docs", params={"token": TOKEN})
    assert page.status_code == 200 and f"url: '/openapi.json?token={TOKEN}'" in page.text


def test_favicon_is_served_without_a_token(token_client):
    """Browsers ask for /favicon.ico on their own, without the page's token."""
    r = token_client.get("/favicon.ico")
    assert r.status_code == 200 and r.headers["content-type"].startswith("image/svg+xml")
    assert r.content.startswith(b"<svg")
    assert token_client.get("/static/swagger/swagger-ui.css").status_code == 200
    spec = token_client.get("/openapi.json", params={"token": TOKEN})
    assert spec.status_code == 200 and "/api/search" in spec.json()["paths"]


def test_page_and_static_module_are_served(client):
    r = client.get("/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert 'type="module" src="static/app.js"' in r.text and 'role="search"' in r.text
    js = client.get("/static/app.js")
    assert js.status_code == 200 and "javascript" in js.headers["content-type"]
    assert "export const api" in js.text


# -- search ---------------------------------------------------------------------------------------
def test_search_gives_the_cli_rows_plus_id_and_urls(client, state, world):
    cap = world["captions"][0]
    for rerank in (None, "auto", "none", "cliprerank"):
        params = {"q": cap["caption"], "k": 5} | ({"rerank": rerank} if rerank else {})
        r = client.get("/api/search", params=params)
        assert r.status_code == 200
        body = r.json()
        assert body["query"] == cap["caption"] and body["took_ms"] > 0
        hits = state.index.search(cap["caption"], k=5, rerank=rerank or "auto")  # = `vr search`
        want = [h.to_dict() for h in hits]  # the rows of `vr search --json`, plus two URLs
        assert [{k: v for k, v in row.items() if k not in ("thumbnail", "media")}
                for row in body["results"]] == want  # fmt: skip
    for row in body["results"]:
        assert state.index.videos[row["id"]]["path"] == row["video"]
        assert row["moment"]["start"] < row["moment"]["end"] <= row["duration"]
        g = state.index.manifest["generation"]
        assert row["media"] == f"/media/{row['id']}?g={g}"
        assert row["thumbnail"] == f"/thumb/{row['id']}?t={row['thumbnail_time']}&g={g}"
    # a trained model on its own caption: the described video comes first
    assert body["results"][0]["id"] == cap["id"]


def test_vr_search_json_and_the_http_api_give_identical_answers(client, world, capsys):
    """One shape: `vr search --json` and GET /api/search give the same answer, row for row,
    apart from the HTTP URLs and the time taken."""
    from video_retrieval.cli import main

    for cap in world["captions"][:2]:
        for rerank in ("none", "cliprerank"):
            rc = main(["search", cap["caption"], "--index", str(world["index"]), "-k", "5",
                       "--rerank", rerank, "--json"])  # fmt: skip
            cli = json.loads(capsys.readouterr().out)
            assert rc == 0
            http = client.get(
                "/api/search", params={"q": cap["caption"], "k": 5, "rerank": rerank}
            ).json()
            assert {k: v for k, v in http.items() if k not in ("results", "took_ms")} == {
                k: v for k, v in cli.items() if k != "results"
            }
            rows = [{k: v for k, v in r.items() if k not in ("thumbnail", "media")}
                    for r in http["results"]]  # fmt: skip
            assert rows == cli["results"]


def test_search_rerank_choice_and_whitespace(client, state, world):
    q = world["captions"][2]["caption"]
    r = client.get("/api/search", params={"q": f"  {q}  ", "k": 3, "rerank": "none"}).json()
    assert r["query"] == q
    hits = state.index.search(q, k=3, rerank="none")
    assert [x["score"] for x in r["results"]] == [h.to_dict()["score"] for h in hits]


def test_batch_search_answers_each_query_as_a_single_search(client, world):
    qs = [c["caption"] for c in world["captions"][:3]]
    r = client.post("/api/search", json={"queries": qs, "k": 4})
    assert r.status_code == 200
    searches = r.json()["searches"]
    assert [s["query"] for s in searches] == qs
    for q, s in zip(qs, searches):
        single = client.get("/api/search", params={"q": q, "k": 4}).json()
        assert s["results"] == single["results"]


def test_search_bad_inputs(client):
    def get(**params):
        return client.get("/api/search", params=params)

    assert "empty" in error_of(get(q=""), 400)
    assert "empty" in error_of(get(q="   "), 400)
    msg = error_of(get(q="x" * (MAX_QUERY_CHARS + 1)), 422)
    assert msg == f"q: String should have at most {MAX_QUERY_CHARS} characters"
    assert client.get("/api/search", params={"q": "x" * MAX_QUERY_CHARS}).status_code == 200
    assert error_of(client.get("/api/search"), 422) == "q: Field required"
    assert error_of(get(q="a", k=0), 422) == "k: Input should be greater than or equal to 1"
    assert (
        error_of(get(q="a", k=MAX_K + 1), 422)
        == f"k: Input should be less than or equal to {MAX_K}"
    )
    assert "k: Input should be a valid integer" in error_of(get(q="a", k="ten"), 422)
    msg = error_of(get(q="a", rerank="/etc/passwd"), 400)
    assert (
        msg
        == "unknown rerank '/etc/passwd': this server offers ['auto', 'none', 'cliprerank', 'query_scored', 'mean']"
    )


def test_batch_search_bad_inputs(client):
    post = client.post
    assert "queries" in error_of(post("/api/search", json={"queries": []}), 422)
    too_many = {"queries": ["a red circle"] * (MAX_BATCH + 1)}
    assert f"at most {MAX_BATCH} items" in error_of(post("/api/search", json=too_many), 422)
    assert "empty" in error_of(post("/api/search", json={"queries": ["ok", " "]}), 400)
    assert "k:" in error_of(post("/api/search", json={"queries": ["a"], "k": 500}), 422)
    r = post("/api/search", content=b"{not json", headers={"content-type": "application/json"})
    assert "JSON" in error_of(r, 422)


def test_concurrent_searches_match_sequential_ones(client, world):
    qs = [c["caption"] for c in world["captions"]][:6] * 4
    want = {q: client.get("/api/search", params={"q": q, "k": 5}).json()["results"] for q in qs}
    got, errors = {}, []

    def worker(q):
        try:
            r = client.get("/api/search", params={"q": q, "k": 5})
            got.setdefault(q, []).append(r.json()["results"])
        except Exception as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(q,)) for q in qs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert all(r == want[q] for q, rs in got.items() for r in rs)
    assert sum(len(v) for v in got.values()) == len(qs)


# -- localize -------------------------------------------------------------------------------------
def test_index_clip_features_pool_frames_by_time():
    frames = np.array([[1, 0], [3, 0], [0, 2], [0, 5], [4, 3]], dtype=np.float32)
    ts = np.array([0.5, 1.5, 2.5, 3.5, 6.2])  # nothing in [4, 6): the frame nearest 5.0 (6.2)
    feats, duration = index_clip_features(frames, ts, 7.0, 2.0)
    assert duration == 7.0 and feats.shape == (4, 2)
    np.testing.assert_allclose(feats[0], [1, 0], atol=1e-6)  # mean of (1,0), (1,0)
    np.testing.assert_allclose(feats[1], [0, 1], atol=1e-6)
    np.testing.assert_allclose(feats[2], [0.8, 0.6], atol=1e-6)
    np.testing.assert_allclose(feats[3], [0.8, 0.6], atol=1e-6)
    # short videos get finer clips (the frame spacing), long ones keep clip_len
    assert zero_shot_clip_len(np.arange(8) * 0.5 + 0.25, 4.0, 2.0) == 0.5
    assert zero_shot_clip_len(np.arange(60) + 0.5, 60.0, 2.0) == 2.0


def test_localize_zero_shot_over_index_frames(client, state, world):
    cap = world["captions"][0]
    r = client.get("/api/localize", params={"id": cap["id"], "q": cap["caption"], "top": 3})
    assert r.status_code == 200
    body = r.json()
    entry = state.index.videos[cap["id"]]
    assert body["id"] == cap["id"] and body["video"] == entry["path"]
    assert body["method"] == "zero_shot" and body["features"] == "index_frames"
    assert body["duration"] == entry["duration"] and body["saliency_unit"] == "cosine"
    assert len(body["saliency"]) == int(np.ceil(entry["duration"] / body["clip_len"] - 1e-6))
    scores = [m["score"] for m in body["moments"]]
    assert 1 <= len(scores) <= 3 and scores == sorted(scores, reverse=True)
    assert all(0 <= m["start"] < m["end"] <= entry["duration"] for m in body["moments"])
    # the same call without HTTP gives the same answer
    direct = state.localize.localize(cap["id"], cap["caption"], top=3)
    assert {k: v for k, v in direct.items() if k != "took_ms"} == {
        k: v for k, v in body.items() if k != "took_ms"
    }


def test_localize_bad_inputs(client, state):
    n = len(state.index)

    def get(**params):
        return client.get("/api/localize", params=params)

    assert error_of(get(id=n, q="a"), 404) == f"unknown video id '{n}' (ids are 0..{n - 1})"
    assert error_of(get(id="../../etc/passwd", q="a"), 404).startswith("unknown video id")
    assert "empty" in error_of(get(id=0, q=" "), 400)
    assert (
        error_of(get(id=0, q="a", top=0), 422) == "top: Input should be greater than or equal to 1"
    )
    assert (
        error_of(get(id=0, q="a", top=21), 422) == "top: Input should be less than or equal to 20"
    )
    assert error_of(get(q="a"), 422) == "id: Field required"
    assert "at most" in error_of(get(id=0, q="y" * 301), 422)
    assert (
        error_of(get(id=0, q="a", nms=1.5), 422) == "nms: Input should be less than or equal to 1"
    )


def test_localize_suppresses_overlapping_moments_unless_asked(client, world):
    from video_retrieval.moments.localize import window_iou

    cap = world["captions"][1]
    params = {"id": cap["id"], "q": cap["caption"], "top": 8}
    default = client.get("/api/localize", params=params).json()
    every = client.get("/api/localize", params={**params, "nms": 1.0}).json()
    assert default["nms_iou"] == 0.5 and every["nms_iou"] == 1.0

    def worst_overlap(moments):
        return max(window_iou((a["start"], a["end"]), (b["start"], b["end"]))
                   for i, a in enumerate(moments) for b in moments[i + 1 :])  # fmt: skip

    assert worst_overlap(default["moments"]) <= 0.5
    # without suppression the overlapping candidates come back (the zero-shot windows of a
    # 4-s clip overlap a lot)
    assert worst_overlap(every["moments"]) > 0.5


def test_localize_with_the_moment_head_encodes_each_video_once(world, tmp_path):
    from video_retrieval import localize
    from video_retrieval.models.assets import DEMO_MOMENTS

    st = load_state(
        ServeConfig(index=world["index"], cache_dir=tmp_path, localize_checkpoint=str(DEMO_MOMENTS))
    )
    cap = world["captions"][0]
    path = st.index.videos[cap["id"]]["path"]
    with TestClient(create_app(state=st), base_url=BASE) as c:
        a = c.get("/api/localize", params={"id": cap["id"], "q": cap["caption"], "top": 3}).json()
        b = c.get("/api/localize", params={"id": cap["id"], "q": "a red circle", "top": 2}).json()
        assert c.get("/api/info").json()["localize_method"] == "head"
    assert a["method"] == b["method"] == "head" and a["saliency_unit"] == "logit"
    assert st.localize.encoded == 1  # the second query reused the clip encodings
    ref = localize(path, cap["caption"], checkpoint=str(DEMO_MOMENTS), top=3)  # the library
    for key in ("moments", "saliency", "clip_len", "duration", "head", "windows"):
        assert a[key] == ref[key], key
    assert len(b["moments"]) <= 2


# -- media ----------------------------------------------------------------------------------------
def test_media_range_requests(client, world):
    vid = world["codec_ids"]["h264_mp4"]
    data = world["codec_paths"]["h264_mp4"].read_bytes()
    size = len(data)
    full = client.get(f"/media/{vid}")
    assert full.status_code == 200 and full.content == data
    assert full.headers["accept-ranges"] == "bytes"
    assert full.headers["content-type"] == "video/mp4"
    assert full.headers["x-media-source"] == "original"
    cases = {
        "bytes=0-99": (0, 99),  # first
        f"bytes={size // 2}-{size // 2 + 999}": (size // 2, size // 2 + 999),  # middle
        "bytes=-100": (size - 100, size - 1),  # last 100
        f"bytes={size - 10}-": (size - 10, size - 1),  # open-ended
        f"bytes={size - 5}-{size + 100}": (size - 5, size - 1),  # clamped to the end
    }
    for header, (a, b) in cases.items():
        r = client.get(f"/media/{vid}", headers={"Range": header})
        assert r.status_code == 206, header
        assert r.headers["content-range"] == f"bytes {a}-{b}/{size}"
        assert r.content == data[a : b + 1]
    r = client.get(f"/media/{vid}", headers={"Range": f"bytes={size}-"})
    assert "outside the file" in error_of(r, 416)
    assert r.headers["content-range"] == f"bytes */{size}"
    assert "malformed" in error_of(client.get(f"/media/{vid}", headers={"Range": "bytes=x"}), 400)
    head = client.head(f"/media/{vid}")
    assert head.status_code == 200 and int(head.headers["content-length"]) == size


@pytest.mark.parametrize(
    "path",
    [
        "/media/..%2F..%2Fetc%2Fpasswd",
        "/media/%2Fetc%2Fpasswd",
        "/media/..%2fserve_index%2fcodecs%2fh264_mp4.mp4",
        "/media/0%2F..%2F..%2Fetc%2Fpasswd",
        "/media/1e1",
        "/media/0x1",
        "/media/+1",
        "/media/",
        "/thumb/..%2F..%2Fetc%2Fpasswd",
        "/static/..%2F..%2F..%2Fconfig.py",
    ],
)
def test_no_path_reaches_a_file_outside_the_index(client, path):
    r = client.get(path)
    error_of(r, 404)
    assert b"root:" not in r.content


def codec_frames(data: bytes) -> tuple[av.video.stream.VideoStream, np.ndarray, list[float]]:
    """Decoded RGB frames and keyframe times of an in-memory video."""
    with av.open(io.BytesIO(data)) as c:
        s = c.streams.video[0]
        info = (s.codec_context.name, s.codec_context.pix_fmt)
        frames, keys = [], []
        for f in c.decode(s):
            frames.append(f.to_ndarray(format="rgb24"))
            if f.key_frame:
                keys.append(float(f.time))
    return info, np.stack(frames), keys


@pytest.mark.parametrize("name", list(HELD_OUT))
def test_every_held_out_codec_is_served_playable(client, state, world, name):
    vid = world["codec_ids"][name]
    original = world["codec_paths"][name].read_bytes()
    plays = HELD_OUT[name][2]
    before = state.proxies.transcodes
    r = client.get(f"/media/{vid}")
    assert r.status_code == 200
    if plays:
        assert r.headers["x-media-source"] == "original" and r.content == original
        assert r.headers["content-type"] == ("video/webm" if name == "vp9_webm" else "video/mp4")
        return
    assert r.headers["x-media-source"] == "proxy" and r.headers["content-type"] == "video/mp4"
    (codec, pix), frames, keys = codec_frames(r.content)
    assert (codec, pix) == ("h264", "yuv420p")
    # the same frames in the same order, the same timing
    np.testing.assert_array_equal(frame_ids(frames), np.arange(CODEC_FRAMES))
    assert {0.0, 2.0} <= set(keys) and max(np.diff(keys)) <= 2.0  # a keyframe every 2 s at least
    assert r.content.find(b"moov") < r.content.find(b"mdat")  # +faststart
    assert state.proxies.transcodes == before + 1
    # cached: a second request (a seek) transcodes nothing and honours Range
    r2 = client.get(f"/media/{vid}", headers={"Range": "bytes=100-199"})
    assert r2.status_code == 206 and r2.content == r.content[100:200]
    assert state.proxies.transcodes == before + 1


def test_media_of_a_video_gone_from_disk(client, world, tmp_path):
    st = load_state(ServeConfig(index=world["index"], cache_dir=tmp_path))
    row = world["codec_ids"]["h264_mp4"]
    st.index.videos[row] = {**st.index.videos[row], "path": str(tmp_path / "moved.mp4")}
    with TestClient(create_app(state=st), base_url=BASE) as c:
        assert (
            error_of(c.get(f"/media/{row}"), 404) == f"video {row} (moved.mp4) is no longer on disk"
        )


# -- thumbnails -----------------------------------------------------------------------------------
def test_thumbnail_is_the_frame_at_t_and_cached(client, state, world):
    from PIL import Image

    vid = world["codec_ids"]["h264_mp4"]
    for t, frame in [(0.0, 0), (1.0, 25), (2.5, 62)]:  # frame presented at t (25 fps)
        r = client.get(f"/thumb/{vid}", params={"t": t})
        assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"
        img = np.asarray(Image.open(io.BytesIO(r.content)).convert("RGB"))
        assert img.shape == (96, 128, 3)  # small videos keep their size
        assert frame_ids(img[None])[0] == frame, t
    hits = state.thumbs.cache.hits
    assert client.get(f"/thumb/{vid}", params={"t": 1.0}).status_code == 200
    assert client.get(f"/thumb/{vid}", params={"t": 1.02}).status_code == 200  # same 0.1 s step
    assert state.thumbs.cache.hits == hits + 2


def test_thumbnail_bad_inputs(client, world):
    vid = world["codec_ids"]["h264_mp4"]
    assert error_of(client.get(f"/thumb/{vid}", params={"t": 9}), 400) == (
        "t=9 is past the end of the video (4 s)"
    )
    assert error_of(client.get(f"/thumb/{vid}", params={"t": -1}), 422) == (
        "t: Input should be greater than or equal to 0"
    )
    assert "valid number" in error_of(client.get(f"/thumb/{vid}", params={"t": "x"}), 422)
    assert error_of(client.get("/thumb/999"), 404).startswith("unknown video id '999'")


def test_disk_cache_is_bounded_least_recently_used_first(tmp_path):
    cache = DiskCache(tmp_path / "c", max_bytes=250)
    made = []

    def maker(tag):
        def make(tmp: Path):
            made.append(tag)
            tmp.write_bytes(tag.encode() * 100)

        return make

    a = cache.get_or_make("a.bin", maker("a"))
    os.utime(a, ns=(1, 1))  # a is the oldest
    b = cache.get_or_make("b.bin", maker("b"))
    os.utime(b, ns=(2, 2))
    cache.get_or_make("a.bin", maker("a"))  # a used again: now b is the oldest
    cache.get_or_make("c.bin", maker("c"))  # 300 bytes > 250: b goes
    assert sorted(p.name for p in (tmp_path / "c").iterdir()) == ["a.bin", "c.bin"]
    assert made == ["a", "b", "c"] and cache.hits == 1 and cache.misses == 3
    assert cache.usage() == (2, 200)


def test_disk_cache_makes_a_file_once_for_concurrent_requests(tmp_path):
    cache = DiskCache(tmp_path, max_bytes=10**6)
    started, release, calls = threading.Event(), threading.Event(), []

    def make(tmp: Path):
        calls.append(1)
        started.set()
        release.wait(10)
        tmp.write_bytes(b"x")

    out = []
    threads = [
        threading.Thread(target=lambda: out.append(cache.get_or_make("f", make))) for _ in range(4)
    ]
    threads[0].start()
    started.wait(10)
    for t in threads[1:]:
        t.start()
    release.set()
    for t in threads:
        t.join()
    assert len(calls) == 1 and len(out) == 4 and len(set(out)) == 1


# -- token ----------------------------------------------------------------------------------------
def test_token_required_on_every_route_but_health_and_page(token_client):
    c = token_client
    for path in ["/api/search?q=a", "/api/info", "/api/localize?id=0&q=a", "/media/0",
                 "/thumb/0", "/docs", "/openapi.json"]:  # fmt: skip
        r = c.get(path)
        assert error_of(r, 401).startswith("this server needs its token"), path
        assert r.headers["www-authenticate"] == "Bearer"
        error_of(c.get(path, headers={"Authorization": "Bearer wrong-token"}), 401)
        sep = "&" if "?" in path else "?"
        error_of(c.get(f"{path}{sep}token=wrong"), 401)
    assert c.get("/healthz").status_code == 200
    assert c.get("/").status_code == 200 and c.get("/static/app.js").status_code == 200
    ok = c.get("/api/search", params={"q": "a"}, headers={"Authorization": f"Bearer {TOKEN}"})
    assert ok.status_code == 200
    assert c.get("/api/search", params={"q": "a", "token": TOKEN}).status_code == 200
    r = c.get("/media/0", params={"token": TOKEN}, headers={"Range": "bytes=0-9"})
    assert r.status_code == 206 and len(r.content) == 10


def test_a_token_less_server_refuses_other_host_names(client, token_client):
    """DNS rebinding: a page on evil.example re-pointed at 127.0.0.1 must not read the index."""
    for host in ("evil.example", "evil.example:8000", "127.0.0.1.evil.example", "10.0.0.2"):
        r = client.get("/api/info", headers={"Host": host})
        assert error_of(r, 400).startswith(f"Host '{host.split(':')[0]}' is not this machine")
    for host in ("127.0.0.1:8000", "localhost:8000", "localhost", "[::1]:8000", "LOCALHOST"):
        assert client.get("/api/info", headers={"Host": host}).status_code == 200, host
    # with a token, the token is the guard (a server on 0.0.0.0 is reached by any name)
    r = token_client.get(
        "/api/info", headers={"Host": "search.lan", "Authorization": f"Bearer {TOKEN}"}
    )
    assert r.status_code == 200


def test_binding_off_loopback_needs_a_token(world):
    for host in ("127.0.0.1", "127.0.0.2", "::1", "localhost"):
        assert is_loopback(host)
        ServeConfig(index=world["index"], host=host).check()
    for host in ("0.0.0.0", "::", "192.168.1.5", "example.org"):
        assert not is_loopback(host)
        with pytest.raises(UserError, match="--token"):
            ServeConfig(index=world["index"], host=host).check()
        ServeConfig(index=world["index"], host=host, token=TOKEN).check()
    with pytest.raises(UserError, match="at least 8"):
        ServeConfig(index=world["index"], token="short").check()


def test_cli_errors_are_one_line(world, tmp_path, capsys):
    from video_retrieval.cli import main

    def run(*args):
        rc = main(["serve", *args])
        err = capsys.readouterr().err.strip()
        assert rc == 2 and "\n" not in err and "Traceback" not in err, err
        return err

    assert "--token" in run("--index", str(world["index"]), "--host", "0.0.0.0")
    assert "not an index directory" in run("--index", str(tmp_path))
    err = run("--index", str(world["index"]), "--reload-interval", "-1")
    assert err == "error: --reload-interval must be >= 0 seconds, got -1.0"
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        port = s.getsockname()[1]
        err = run("--index", str(world["index"]), "--port", str(port))
    assert err.startswith(f"error: cannot listen on 127.0.0.1:{port}")
