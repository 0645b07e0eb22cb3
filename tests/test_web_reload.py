"""`vr serve` picks up an index that `vr index` updated while it runs (a new generation), keeps
its loaded models, and refuses (keeping the served generation) an index rebuilt with other
settings."""

from __future__ import annotations

import time

import pytest
from _serve_util import shared_serve_index
from fastapi.testclient import TestClient

from video_retrieval.web.app import create_app
from video_retrieval.web.config import ServeConfig
from video_retrieval.web.state import load_state

BASE = "http://127.0.0.1:8000"


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return shared_serve_index(tmp_path_factory)


def build(paths, index_dir):
    from video_retrieval.index.api import Index
    from video_retrieval.models.assets import DEMO_RETRIEVAL

    return Index.build(
        [str(p) for p in paths], index_dir, checkpoint=str(DEMO_RETRIEVAL), num_frames=8,
        progress=False,
    )  # fmt: skip


def test_reload_serves_the_new_generation_with_the_same_models(world, tmp_path):
    videos = sorted((world["index"].parent / "collection" / "videos").iterdir())
    index_dir = tmp_path / "index"
    build(videos[:3], index_dir)
    st = load_state(ServeConfig(index=index_dir, cache_dir=tmp_path / "c", reload_interval=0))
    models = st.index.models()
    with TestClient(create_app(state=st), base_url=BASE) as c:
        assert c.post("/api/reload").json()["reloaded"] is False  # nothing changed yet
        first = c.get("/api/info").json()
        assert first["videos"] == 3 and first["reloads"] == 0
        old = c.get("/api/search", params={"q": "a red circle", "k": 1}).json()
        assert old["generation"] == first["generation"]
        old_hit = old["results"][0]
        assert c.get(old_hit["media"], headers={"Range": "bytes=0-9"}).status_code == 206

        build(videos, index_dir)  # vr index again: adds the other videos
        assert c.get("/healthz").json()["videos"] == 3  # served until a check
        r = c.post("/api/reload").json()
        assert r == {
            "reloaded": True, "generation": first["generation"] + 1, "videos": len(videos),
            "reload_error": None,
        }  # fmt: skip
        assert c.get("/healthz").json()["videos"] == len(videos)
        assert st.index.models() is models  # the models were not loaded again
        new = str(videos[-1].resolve())
        cap = next(x for x in world["captions"] if x["video"].endswith(videos[-1].name))
        hits = c.get("/api/search", params={"q": cap["caption"], "k": len(videos)}).json()
        assert {h["video"] for h in hits["results"]} == {str(v.resolve()) for v in videos}
        hit = next(h for h in hits["results"] if h["video"] == new)
        assert st.index.videos[hit["id"]]["path"] == new  # ids are the new generation's
        assert c.get(f"/media/{hit['id']}", headers={"Range": "bytes=0-9"}).status_code == 206
        assert hit["media"] == f"/media/{hit['id']}?g={r['generation']}"
        # a result of the previous version: its URLs and its id fail in one line, no other video
        for url in (old_hit["media"], old_hit["thumbnail"]):
            err = c.get(url)
            assert err.status_code == 409 and err.json() == {
                "error": f"the index was updated since this result was found (version "
                f"{first['generation']}, now {r['generation']}): search again"
            }
        loc = {"id": old_hit["id"], "q": cap["caption"], "g": first["generation"]}
        assert c.get("/api/localize", params=loc).status_code == 409
        loc["g"] = r["generation"]
        assert (
            c.get("/api/localize", params=loc).json()["video"]
            == st.index.videos[old_hit["id"]]["path"]
        )
        assert c.post("/api/reload").json()["reloaded"] is False
        assert c.get("/api/info").json()["reloads"] == 1


def test_watcher_reloads_and_a_rebuild_with_other_settings_is_refused(world, tmp_path):
    from video_retrieval.index import files as store
    from video_retrieval.media.atomic import atomic_write_json

    videos = sorted((world["index"].parent / "collection" / "videos").iterdir())
    index_dir = tmp_path / "index"
    build(videos[:2], index_dir)
    st = load_state(ServeConfig(index=index_dir, cache_dir=tmp_path / "c", reload_interval=0.2))
    with TestClient(create_app(state=st), base_url=BASE) as c:
        build(videos[:4], index_dir)
        deadline = time.monotonic() + 30
        while c.get("/healthz").json()["videos"] != 4 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert c.get("/healthz").json()["videos"] == 4  # the watcher swapped it in

        manifest = store.read_manifest(index_dir)  # as if rebuilt with 16 frames per video
        manifest["fingerprint"]["sampling"] = {**manifest["fingerprint"]["sampling"], "x": 1}
        manifest["generation"] += 1
        atomic_write_json(index_dir / store.MANIFEST, manifest)
        r = c.post("/api/reload").json()
        assert r["reloaded"] is False and r["videos"] == 4
        assert "sampling changed" in r["reload_error"] and "restart vr serve" in r["reload_error"]
        info = c.get("/api/info").json()
        assert info["reload_error"] == r["reload_error"] and info["reloads"] == 1
        hits = c.get("/api/search", params={"q": "a red circle", "k": 4}).json()["results"]
        assert len(hits) == 4  # still served
