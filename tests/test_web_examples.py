"""Search by example and export over HTTP (issue 30): an uploaded frame finds its video first with
the rows `vr search --image --json` prints (plus URLs), an uploaded sub-clip finds its source,
``like=ID`` leaves its video out, ``/media/{id}/clip`` is a downloadable MP4 of the asked
length; bad uploads and ranges are a 4xx with one line, never a 500."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from _cli_util import run_cli
from _serve_util import CODEC_FPS, shared_serve_index
from _video_util import frame_ids
from fastapi.testclient import TestClient
from PIL import Image

from video_retrieval.media.decode import load_frames, probe_video
from video_retrieval.web.app import create_app
from video_retrieval.web.config import MAX_IMAGES, MAX_UPLOAD_BYTES, ServeConfig
from video_retrieval.web.state import load_state

BASE = "http://127.0.0.1:8000"


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return shared_serve_index(tmp_path_factory)


@pytest.fixture(scope="module")
def state(world, tmp_path_factory):
    return load_state(ServeConfig(index=world["index"], cache_dir=tmp_path_factory.mktemp("c")))


@pytest.fixture(scope="module")
def client(state):
    with TestClient(create_app(state=state), base_url=BASE) as c:
        yield c


def error_of(r, status: int) -> str:
    assert r.status_code == status, (r.status_code, r.text)
    body = r.json()
    assert set(body) == {"error"} and "\n" not in body["error"]
    return body["error"]


def png(img: np.ndarray, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format=fmt)
    return buf.getvalue()


def urls_off(rows):
    return [{k: v for k, v in r.items() if k not in ("thumbnail", "media")} for r in rows]


def test_an_uploaded_frame_finds_its_video_as_the_cli_does(client, state, world, tmp_path, capsys):
    cap = world["captions"][3]
    row = cap["id"]
    frame = load_frames(state.index.videos[row]["path"], num_frames=1, start=2.3, end=2.31)
    data = png(frame.pixels[0])
    r = client.post("/api/search", files={"image": ("grab.png", data, "image/png")},
                    data={"k": "5"})  # fmt: skip
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["query_kind"] == "image" and body["results"][0]["id"] == row
    assert body["took_ms"] > 0 and body["rerank"] == "frames"
    # the rows of `vr search --image --json`, plus the two URLs
    (tmp_path / "grab.png").write_bytes(data)
    rc, out, err = run_cli(capsys, "search", "--image", tmp_path / "grab.png", "--index",
                           world["index"], "-k", "5", "--json")  # fmt: skip
    assert rc == 0, err
    cli = json.loads(out)
    assert urls_off(body["results"]) == cli["results"]
    assert {k: cli[k] for k in ("query", "query_kind", "example", "rerank", "score_kind")} == {
        k: body[k] for k in ("query", "query_kind", "example", "rerank", "score_kind")
    }
    g = state.index.manifest["generation"]
    assert body["results"][0]["media"] == f"/media/{row}?g={g}"
    # text + image, and a query set of two images
    r = client.post("/api/search", files=[("image", ("a.png", data, "image/png")),
                                          ("image", ("b.jpg", png(frame.pixels[0], "JPEG"),
                                                     "image/jpeg"))],
                    data={"q": cap["caption"], "image_weight": "0.5", "k": "3"})  # fmt: skip
    both = r.json()
    assert r.status_code == 200 and both["query_kind"] == "text+image"
    assert both["example"] == {"images": ["a.png", "b.jpg"], "text": cap["caption"],
                               "image_weight": 0.5}  # fmt: skip
    assert both["results"][0]["id"] == row


def test_an_uploaded_sub_clip_finds_its_source(client, state, world, tmp_path):
    from video_retrieval.media.cut import cut_clip

    row = world["captions"][5]["id"]
    clip = cut_clip(state.index.videos[row]["path"], 1.0, 3.0, tmp_path / "c.mp4").path
    r = client.post("/api/search", files={"video": ("c.mp4", clip.read_bytes(), "video/mp4")},
                    data={"k": "3"})  # fmt: skip
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["query_kind"] == "video" and body["results"][0]["id"] == row
    assert body["example"]["video"] == "c.mp4"  # the upload's name, never a server path
    assert not list((state.config.cache_root / "uploads").iterdir())  # the upload is removed


def test_more_like_this_over_http(client, state):
    r = client.get("/api/search", params={"like": 2, "k": 5})
    assert r.status_code == 200
    body = r.json()
    assert body["query_kind"] == "like" and 2 not in [h["id"] for h in body["results"]]
    assert urls_off(body["results"]) == [h.to_dict() for h in state.index.search(like=2, k=5)]
    mine = client.get("/api/search", params={"like": 2, "k": 2, "include_self": "true"}).json()
    assert mine["results"][0]["id"] == 2
    ranged = client.get("/api/search", params={"like": 2, "start": 1, "end": 3}).json()
    assert ranged["example"]["start"] == 1.0 and ranged["example"]["end"] == 3.0


def test_a_moment_downloads_as_an_mp4_of_its_length(client, state, world):
    vid = world["codec_ids"]["h264_mp4"]
    r = client.get(f"/media/{vid}/clip", params={"start": 0.6, "end": 2.2})
    assert r.status_code == 200 and r.headers["content-type"] == "video/mp4"
    assert r.headers["content-disposition"] == 'attachment; filename="h264_mp4_0.6-2.2s.mp4"'
    path = state.config.cache_root / "got.mp4"
    path.write_bytes(r.content)
    info = probe_video(path)
    assert abs(info.duration - 1.6) <= 1 / CODEC_FPS + 1e-6
    assert frame_ids(load_frames(path, num_frames=1, start=0, end=0.01).pixels)[0] == 15
    cuts = state.clips.cuts
    again = client.get(f"/media/{vid}/clip", params={"start": 0.6, "end": 2.2})
    assert again.content == r.content and state.clips.cuts == cuts  # cached
    copy = client.get(f"/media/{vid}/clip", params={"start": 0.6, "end": 2.2, "copy": "true"})
    assert copy.status_code == 200 and float(copy.headers["x-clip-start"]) <= 0.6


def test_bad_uploads_and_ranges_are_one_line_4xx(client, state, world):
    def post(files=None, data=None, **kw):
        return client.post("/api/search", files=files, data=data, **kw)

    frame = png(np.full((48, 64, 3), 90, np.uint8))
    bomb = io.BytesIO()
    Image.new("L", (9000, 9000)).save(bomb, format="PNG")
    assert "not an image" in error_of(post({"image": ("x.png", b"plain text", "image/png")}), 400)
    assert "over the 50 MP limit" in error_of(post({"image": ("b.png", bomb.getvalue(),
                                                               "image/png")}), 400)  # fmt: skip
    assert "damaged or truncated" in error_of(post({"image": ("t.png", frame[:60], "image/png")}),
                                              400)  # fmt: skip
    assert "is empty" in error_of(post({"image": ("e.png", b"", "image/png")}), 400)
    too_big = b"\0" * (MAX_UPLOAD_BYTES + 1)
    assert "limit" in error_of(post({"image": ("big.png", too_big, "image/png")}), 413)
    many = [("image", (f"{i}.png", frame, "image/png")) for i in range(MAX_IMAGES + 1)]
    assert f"at most {MAX_IMAGES}" in error_of(post(many), 400)
    assert "send an image" in error_of(post(data={"k": "3", "q": "a red circle"}), 400)
    assert "unknown field" in error_of(post({"picture": ("x.png", frame, "image/png")}), 400)
    assert "k must be in" in error_of(post({"image": ("x.png", frame, "image/png")},
                                           {"k": "0"}), 400)  # fmt: skip
    assert "must be a number" in error_of(post({"image": ("x.png", frame, "image/png")},
                                                {"image_weight": "lots"}), 400)  # fmt: skip
    assert "image_weight must be in" in error_of(post({"image": ("x.png", frame, "image/png")},
                                                      {"q": "a", "image_weight": "2"}), 400)  # fmt: skip
    assert "not of an image" in error_of(post({"image": ("x.png", frame, "image/png")},
                                              {"start": "1"}), 400)  # fmt: skip
    assert "reranks with" in error_of(post({"image": ("x.png", frame, "image/png")},
                                           {"rerank": "query_scored"}), 400)  # fmt: skip
    bad = error_of(post({"video": ("v.mp4", b"not a video at all", "video/mp4")}), 400)
    assert bad.startswith("v.mp4: not a readable video") and "upload" not in bad
    # like=ID and moments
    n = len(state.index)
    assert error_of(client.get("/api/search", params={"like": n}), 404).startswith("unknown video")
    assert "outside" in error_of(client.get("/api/search", params={"like": 0, "start": 3,
                                                                    "end": 99}), 400)  # fmt: skip
    assert "not both" in error_of(client.get("/api/search", params={"like": 0, "q": "a"}), 400)
    assert "go with like" in error_of(client.get("/api/search", params={"q": "a", "start": 1}), 400)
    vid = world["codec_ids"]["h264_mp4"]
    assert "outside the video" in error_of(client.get(f"/media/{vid}/clip",
                                                      params={"start": 3, "end": 9}), 400)  # fmt: skip
    assert "outside the video" in error_of(client.get(f"/media/{vid}/clip",
                                                      params={"start": 2, "end": 1}), 400)  # fmt: skip
    assert "end: Field required" == error_of(client.get(f"/media/{vid}/clip",
                                                        params={"start": 1}), 422)  # fmt: skip
    assert error_of(client.get("/media/999/clip", params={"start": 0, "end": 1}), 404)


def test_long_moments_are_refused_by_the_server_limit(state, world, monkeypatch):
    from video_retrieval.web.routers import media

    monkeypatch.setattr(media, "MAX_CLIP_SECONDS", 1.0)
    vid = world["codec_ids"]["h264_mp4"]
    with TestClient(create_app(state=state), base_url=BASE) as c:
        msg = error_of(c.get(f"/media/{vid}/clip", params={"start": 0, "end": 2}), 400)
    assert "the limit is 1 s" in msg


def test_openapi_documents_the_uploads(client):
    spec = client.get("/openapi.json").json()
    post = spec["paths"]["/api/search"]["post"]["requestBody"]["content"]
    assert {"application/json", "multipart/form-data"} <= set(post)
    assert "image" in post["multipart/form-data"]["schema"]["properties"]
    get = {p["name"] for p in spec["paths"]["/api/search"]["get"]["parameters"]}
    assert {"q", "like", "start", "end", "include_self"} <= get
    assert "/media/{vid}/clip" in spec["paths"]
