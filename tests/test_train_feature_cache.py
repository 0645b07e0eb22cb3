"""Frozen-feature cache: equality with on-the-fly encoding, resumability (in-process and SIGKILL),
failures, fingerprint refusal, datasets and the ``vr cache`` command."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import pickle
import signal
from pathlib import Path

import numpy as np
import pytest
import torch
from video_retrieval.encoders.factory import create_encoder
from video_retrieval.encoders.patches import select_topk_patches

from video_retrieval.errors import UserError
from video_retrieval.media.decode import load_frames
from video_retrieval.media.write import write_video
from video_retrieval.train.cache_build import build_cache
from video_retrieval.train.cache_data import (
    CachedCaptionDataset,
    CachedPairDataset,
    caption_loader,
    eval_arrays,
    pair_loader,
)
from video_retrieval.train.cache_encode import fit_length
from video_retrieval.train.cache_items import items_from_captions_jsonl, videos_from_list_or_dir
from video_retrieval.train.cache_reader import FeatureCache
from video_retrieval.train.cache_settings import ARRAY_FILES, CacheSettings, CaptionItem, VideoItem

T = 6
SETTINGS = dict(num_frames=T, patches="all", max_words=16)


def _rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """Max abs difference relative to the reference vectors' norm (unit-norm scale)."""
    scale = b.norm(dim=-1, keepdim=True).clamp(min=1e-6)
    return float(((a - b).abs() / scale).max())


@pytest.fixture(scope="module")
def encoder():
    enc = create_encoder("vr-tiny", precision="fp32")
    enc.eval()
    return enc


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Five small real videos (two sizes, one shorter than T frames), one broken file, captions."""
    root = tmp_path_factory.mktemp("cache_world")
    vids = root / "videos"
    rng = np.random.default_rng(0)
    specs = [(12, 48, 64), (12, 40, 40), (3, 48, 64), (10, 48, 64), (12, 40, 40)]
    paths = []
    for i, (n, h, w) in enumerate(specs):
        # smooth colour ramps (not noise) so codec error stays small and frames differ
        base = rng.integers(0, 255, (1, 1, 1, 3))
        ramp = np.linspace(0, 200, n)[:, None, None, None] * rng.random((1, h, w, 1))
        frames = np.clip(base + ramp, 0, 255).astype(np.uint8)
        paths.append(write_video(vids / f"vid{i}.mp4", frames, fps=6))
    bad = vids / "vid5.mp4"
    bad.write_bytes(b"this is not a video")
    paths.append(bad)
    videos = [
        VideoItem(id=p.stem, path=str(p), split="train" if i < 4 else "test")
        for i, p in enumerate(paths)
    ]
    texts = [
        "a red circle moves left",
        "a blue square grows",
        "two shapes appear then vanish",
        "a green triangle shrinks slowly",
        "the circle moves right",
        "a yellow star appears",
        "something in the broken video",
        "a purple square moves up",
    ]
    t2v = [0, 1, 2, 3, 0, 4, 5, 1]
    captions = [
        CaptionItem(text=t, video_index=v, split=videos[v].split) for t, v in zip(texts, t2v)
    ]
    return root, videos, captions


@pytest.fixture(scope="module")
def full_cache(world, encoder, tmp_path_factory):
    _, videos, captions = world
    out = tmp_path_factory.mktemp("full") / "cache"
    report = build_cache(
        encoder, videos, captions, out, CacheSettings(**SETTINGS), chunk_size=2, text_chunk_size=3
    )
    return out, report


def _arrays(path: Path) -> dict[str, np.ndarray]:
    return {n: np.load(path / f"{n}.npy") for n in ARRAY_FILES if (path / f"{n}.npy").exists()}


def _assert_same_arrays(a: Path, b: Path) -> None:
    xa, xb = _arrays(a), _arrays(b)
    assert sorted(xa) == sorted(xb)
    for name in xa:
        np.testing.assert_array_equal(xa[name], xb[name], err_msg=name)


# -------------------------------------------------------------------------------- equality
def test_cached_features_equal_on_the_fly_encoding(world, encoder, full_cache):
    _, videos, captions = world
    out, report = full_cache
    cache = FeatureCache.open(out, encoder=encoder)
    assert (cache.num_videos, cache.num_texts, cache.num_frames) == (6, 8, T)
    assert cache.embed_dim == encoder.embed_dim
    assert report.video_chunks_done == 3 and report.text_chunks_done == 3

    for i in range(5):
        fr = load_frames(videos[i].path, num_frames=T)
        ref_cls, ref_patches = encoder.encode_frames(fr.pixels, return_patches=True)
        vf = cache.video_features([i])
        assert vf.frames.dtype == torch.float32
        m = torch.from_numpy(fr.mask)
        assert torch.equal(vf.mask[0], m)
        assert _rel_err(vf.frames[0][m], ref_cls[m]) < 2e-3
        assert _rel_err(vf.patches[0][m], ref_patches[m]) < 2e-3
        np.testing.assert_allclose(cache.timestamps([i])[0].numpy(), fr.timestamps, atol=1e-4)
        assert cache.durations([i])[0] == pytest.approx(fr.duration, abs=1e-3)
    # the 3-frame video is padded and masked, never filled silently
    assert cache.video_features([2]).mask[0].sum() == 3

    texts = [c.text for c in captions]
    with torch.no_grad():
        ref = encoder.encode_text(encoder.tokenize(texts, context_length=16), return_words=True)
    tf = cache.text_features()
    assert tf.words.shape == (8, 16, encoder.embed_dim)
    assert _rel_err(tf.sentence, ref.sentence) < 2e-3
    assert torch.equal(tf.word_mask, ref.word_mask)
    wm = ref.word_mask
    assert _rel_err(tf.words[wm], ref.words[wm]) < 2e-3
    assert cache.text_to_video.tolist() == [c.video_index for c in captions]
    # stored as fp16 memmaps
    assert np.load(out / "video_frames.npy", mmap_mode="r").dtype == np.float16
    assert np.load(out / "text_words.npy", mmap_mode="r").dtype == np.float16


def test_manifest_records_model_settings_and_items(world, encoder, full_cache):
    _, videos, captions = world
    out, _ = full_cache
    man = json.loads((out / "manifest.json").read_text())
    assert man["status"] == "complete" and man["format_version"] == 1
    assert man["fingerprint"] == encoder.fingerprint()
    assert man["encoder_spec"]["model"] == "vr-tiny"
    assert man["sampling"]["num_frames"] == T and man["sampling"]["fps"] is None
    assert man["counts"] == {"videos": 6, "texts": 8, "failed": 1}
    assert [v["path"] for v in man["videos"]] == [v.path for v in videos]
    assert [c["text"] for c in man["captions"]] == [c.text for c in captions]
    assert man["arrays"]["video_patches"]["shape"] == [6, T, 64, encoder.embed_dim]


def test_bad_video_is_recorded_and_masked(world, full_cache):
    out, report = full_cache
    cache = FeatureCache.open(out)
    assert len(report.failures) == 1 and cache.failures == report.failures
    f = cache.failures[0]
    assert f["index"] == 5 and f["id"] == "vid5" and f["reason"]
    vf = cache.video_features([5])
    assert not vf.mask.any()
    assert cache.failed.tolist() == [False] * 5 + [True]
    # failed videos (and their captions) are left out of training and evaluation by default
    assert 5 not in CachedPairDataset(cache).video_ids
    assert 6 not in CachedCaptionDataset(cache).text_ids
    assert 6 in CachedCaptionDataset(cache, include_failed=True).text_ids


# -------------------------------------------------------------------------------- top-k patches
def test_topk_patches_are_highest_cosine_to_cls(world, encoder, full_cache, tmp_path):
    _, videos, captions = world
    out_all, _ = full_cache
    out = tmp_path / "topk"
    settings = CacheSettings(num_frames=T, patches="topk", patch_topk=5, words=False)
    build_cache(encoder, videos[:3], [], out, settings, chunk_size=2)
    cache = FeatureCache.open(out)
    assert cache.manifest["patches"]["criterion"] == "cosine_to_frame_cls"
    vf = cache.video_features()
    idx = cache.patch_indices()
    assert vf.patches.shape == (3, T, 5, encoder.embed_dim) and idx.shape == (3, T, 5)
    ref = FeatureCache.open(out_all).video_features([0, 1, 2])
    for i in range(3):
        for t in torch.nonzero(vf.mask[i]).flatten().tolist():
            k = idx[i, t]
            assert torch.all(k[1:] > k[:-1])  # ascending patch order
            # the kept tokens are exactly the all-patch tokens at those positions
            torch.testing.assert_close(vf.patches[i, t], ref.patches[i, t, k], atol=0, rtol=0)
            cos = torch.nn.functional.cosine_similarity(
                ref.patches[i, t], ref.frames[i, t][None], dim=-1
            )
            assert set(k.tolist()) == set(cos.topk(5).indices.tolist())
    # no text was cached: text features are empty, word features absent
    assert cache.num_texts == 0 and not cache.has_words


def test_select_topk_patches_unit():
    cls = torch.tensor([[1.0, 0.0]])
    patches = torch.tensor([[[0.0, 1.0], [2.0, 0.1], [1.0, 1.0], [-1.0, 0.0]]])
    kept, idx = select_topk_patches(cls, patches, 2)
    assert idx.tolist() == [[1, 2]]
    assert torch.equal(kept, patches[:, [1, 2]])


def test_fit_length_subsamples_and_pads():
    px = np.arange(10)[:, None, None, None].repeat(2, 1).astype(np.uint8)
    ts = np.arange(10) / 2.0
    p, t, m = fit_length(px, ts, np.ones(10, bool), 4)
    assert p[:, 0, 0, 0].tolist() == [0, 3, 6, 9] and m.all()
    assert t.tolist() == [0.0, 1.5, 3.0, 4.5]
    p, t, m = fit_length(px[:2], ts[:2], np.ones(2, bool), 4)
    assert m.tolist() == [True, True, False, False]
    assert p[:, 0, 0, 0].tolist() == [0, 1, 1, 1]


# -------------------------------------------------------------------------------- resume
class _Stop(Exception):
    pass


def test_resume_after_exception_equals_uninterrupted(world, encoder, full_cache, tmp_path):
    _, videos, captions = world
    out_full, _ = full_cache
    out = tmp_path / "resume"
    seen = []

    def stop_after_two(kind, start, end):
        seen.append((kind, start, end))
        if len(seen) == 2:
            raise _Stop

    settings = CacheSettings(**SETTINGS)
    with pytest.raises(_Stop):
        build_cache(
            encoder,
            videos,
            captions,
            out,
            settings,
            chunk_size=2,
            text_chunk_size=3,
            on_chunk=stop_after_two,
        )
    with pytest.raises(UserError, match="did not finish"):
        FeatureCache.open(out)
    report = build_cache(encoder, videos, captions, out, settings, chunk_size=2, text_chunk_size=3)
    assert report.resumed and report.video_chunks_done == 1 and report.text_chunks_done == 3
    _assert_same_arrays(out, out_full)
    assert FeatureCache.open(out).failures == FeatureCache.open(out_full).failures
    # a rerun of a finished build does nothing
    again = build_cache(encoder, videos, captions, out, settings, chunk_size=2, text_chunk_size=3)
    assert again.up_to_date and again.video_chunks_done == 0


def _killed_build(videos, captions, out: str, kill_after: int) -> None:
    """Child process body: build the cache and SIGKILL itself after ``kill_after`` chunks."""
    torch.set_num_threads(1)
    enc = create_encoder("vr-tiny", precision="fp32")
    count = [0]

    def on_chunk(kind, start, end):
        count[0] += 1
        if count[0] == kill_after:
            os.kill(os.getpid(), signal.SIGKILL)

    build_cache(
        enc, videos, captions, out, CacheSettings(**SETTINGS), chunk_size=2, text_chunk_size=3,
        on_chunk=on_chunk,
    )  # fmt: skip
    os._exit(0)


def test_resume_after_sigkill_equals_uninterrupted(world, encoder, full_cache, tmp_path):
    """A real (forked) process SIGKILLed after two recorded chunks; the rerun resumes and
    produces exactly the arrays of an uninterrupted build."""
    _, videos, captions = world
    out_full, _ = full_cache
    out = tmp_path / "killed"
    proc = mp.get_context("fork").Process(
        target=_killed_build, args=(videos, captions, str(out), 2)
    )
    proc.start()
    proc.join(timeout=300)
    assert proc.exitcode == -signal.SIGKILL
    man = json.loads((out / "manifest.json").read_text())
    assert man["status"] == "building"
    journal = [json.loads(x) for x in (out / "journal.jsonl").read_text().splitlines()]
    assert [(e["kind"], e["start"], e["end"]) for e in journal] == [
        ("video", 0, 2),
        ("video", 2, 4),
    ]
    logs = []
    report = build_cache(
        encoder, videos, captions, out, CacheSettings(**SETTINGS), chunk_size=2, text_chunk_size=3,
        log=logs.append,
    )  # fmt: skip
    assert report.resumed and report.video_chunks_done == 1
    assert any("resuming" in m for m in logs)
    _assert_same_arrays(out, out_full)


def test_changed_inputs_are_refused_unless_overwrite(world, encoder, tmp_path):
    _, videos, captions = world
    out = tmp_path / "c"
    build_cache(encoder, videos[:2], [], out, CacheSettings(num_frames=2))
    with pytest.raises(UserError, match="different videos, captions or settings"):
        build_cache(encoder, videos[:2], [], out, CacheSettings(num_frames=3))
    other = create_encoder("vr-tiny", precision="fp32", seed=1)
    with pytest.raises(UserError, match="different model"):
        build_cache(other, videos[:2], [], out, CacheSettings(num_frames=2))
    report = build_cache(encoder, videos[:2], [], out, CacheSettings(num_frames=3), overwrite=True)
    assert not report.up_to_date
    assert FeatureCache.open(out).num_frames == 3
    # two builds of one folder at once: the second is refused
    import fcntl

    with open(out / ".lock", "a") as held:
        fcntl.flock(held.fileno(), fcntl.LOCK_EX)
        with pytest.raises(UserError, match="another `vr cache`"):
            build_cache(encoder, videos[:2], [], out, CacheSettings(num_frames=3))
    # a non-cache folder is never overwritten by mistake
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "a.txt").write_text("keep me")
    with pytest.raises(UserError, match="not a feature cache"):
        build_cache(encoder, videos[:2], [], tmp_path / "notes", CacheSettings(num_frames=2))


def test_open_refuses_other_fingerprint(full_cache, encoder):
    out, _ = full_cache
    FeatureCache.open(out, encoder=encoder)  # same model: fine
    other = create_encoder("vr-tiny", precision="fp32", seed=1)
    with pytest.raises(UserError, match="different model"):
        FeatureCache.open(out, encoder=other)
    with pytest.raises(UserError, match="not a feature cache"):
        FeatureCache.open(out.parent)


# -------------------------------------------------------------------------------- datasets
def test_pair_dataset_samples_one_caption_per_video(full_cache):
    out, _ = full_cache
    cache = FeatureCache.open(out)
    ds = CachedPairDataset(cache)
    assert sorted(ds.video_ids) == [0, 1, 2, 3, 4]
    torch.manual_seed(0)
    drawn = {ds[ds.video_ids.index(0)]["text_index"] for _ in range(40)}
    assert drawn == {0, 4}  # both captions of video 0, nothing else
    loader = pair_loader(cache, batch_size=3, shuffle=True)
    seen_videos = []
    for batch in loader:
        assert set(batch) == {"video", "text", "video_index", "text_index"}
        b = len(batch["video_index"])
        assert batch["video"].frames.shape == (b, T, cache.embed_dim)
        assert batch["video"].patches.shape == (b, T, 64, cache.embed_dim)
        assert batch["text"].words.shape == (b, 16, cache.embed_dim)
        assert torch.equal(cache.text_to_video[batch["text_index"]], batch["video_index"])
        torch.testing.assert_close(
            batch["video"].frames, cache.video_features(batch["video_index"]).frames
        )
        seen_videos += batch["video_index"].tolist()
    assert sorted(seen_videos) == [0, 1, 2, 3, 4]  # an epoch sees every video once
    train = CachedPairDataset(cache, split="train", words=False, patches=False)
    assert sorted(train.video_ids) == [0, 1, 2, 3]
    b = train.collate([train[0], train[1]])
    assert b["video"].patches is None and b["text"].words is None


def test_caption_loader_and_eval_arrays_cover_all_captions(full_cache):
    out, _ = full_cache
    cache = FeatureCache.open(out)
    idx = torch.cat([b["text_index"] for b in caption_loader(cache, batch_size=3)])
    assert idx.tolist() == [0, 1, 2, 3, 4, 5, 7]  # caption 6 belongs to the failed video
    text, video, t2v, vidx, tidx = eval_arrays(cache, split="train")
    assert tidx.tolist() == [0, 1, 2, 3, 4, 7] and vidx.tolist() == [0, 1, 2, 3]
    assert torch.equal(vidx[t2v], cache.text_to_video[tidx])
    torch.testing.assert_close(text.sentence, cache.text_features(tidx).sentence)
    torch.testing.assert_close(video.frames, cache.video_features(vidx).frames)


def test_cache_pickles_without_array_data(full_cache):
    out, _ = full_cache
    cache = FeatureCache.open(out)
    cache.video_features([0, 1])  # maps the arrays
    blob = pickle.dumps(cache)
    assert len(blob) < 20_000
    clone = pickle.loads(blob)
    torch.testing.assert_close(clone.video_features([1]).frames, cache.video_features([1]).frames)


# -------------------------------------------------------------------------------- inputs + CLI
def test_input_readers(tmp_path):
    (tmp_path / "v" / "sub").mkdir(parents=True)
    for name in ("v/a.mp4", "v/sub/b.webm", "v/readme.txt"):
        (tmp_path / name).write_bytes(b"x")
    items = videos_from_list_or_dir(tmp_path / "v")
    assert [v.id for v in items] == ["a", "b"]
    lst = tmp_path / "list.txt"
    lst.write_text("# videos\nv/a.mp4\n\n/abs/c.mp4\n")
    assert [v.path for v in videos_from_list_or_dir(lst)] == [
        str(tmp_path / "v/a.mp4"),
        "/abs/c.mp4",
    ]
    jl = tmp_path / "captions.jsonl"
    rows = [
        {"video": "v/a.mp4", "caption": "one", "split": "train"},
        {"video": "v/sub/b.webm", "caption": "two", "split": "test"},
        {"video": "v/a.mp4", "caption": "three", "split": "train"},
    ]
    jl.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    videos, caps = items_from_captions_jsonl(jl)
    assert [v.id for v in videos] == ["a", "b"] and [c.video_index for c in caps] == [0, 1, 0]
    videos, caps = items_from_captions_jsonl(jl, split="train")
    assert len(videos) == 1 and [c.text for c in caps] == ["one", "three"]
    with pytest.raises(UserError):
        videos_from_list_or_dir(tmp_path / "missing")


def test_cli_cache_builds_and_resumes(world, tmp_path, capsys):
    from video_retrieval.cli import main

    root, videos, captions = world
    jl = root / "captions.jsonl"
    rows = [
        {
            "video": os.path.relpath(videos[c.video_index].path, root),
            "caption": c.text,
            "split": c.split,
        }
        for c in captions
    ]
    jl.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    out = tmp_path / "cli_cache"
    argv = [
        "cache",
        "--captions",
        str(jl),
        "--split",
        "train",
        "--out",
        str(out),
        "--num-frames",
        "3",
        "--model",
        "vr-tiny",
        "--random-weights",
        "--quiet",
        "--json",
    ]
    assert main(argv) == 0
    cap = capsys.readouterr()
    summary = json.loads(cap.out)
    assert summary["videos"] == 4 and summary["captions"] == 6 and summary["failed"] == 0
    assert summary["weights"]["kind"] == "random" and "RANDOM weights" in cap.err
    cache = FeatureCache.open(out)
    assert cache.num_frames == 3 and cache.video_ids == ["vid0", "vid1", "vid2", "vid3"]
    assert main(argv) == 0
    assert json.loads(capsys.readouterr().out)["up_to_date"] is True
    # user mistakes: exit 2 with a one-line error, no traceback
    assert main(["cache", "--videos", str(tmp_path / "nope"), "--out", str(tmp_path / "x")]) == 2
    assert "error:" in capsys.readouterr().err
    assert (
        main(
            [
                "cache",
                "--videos",
                str(root / "videos"),
                "--out",
                str(tmp_path / "y"),
                "--patches",
                "topk",
                "--patch-topk",
                "0",
            ]
        )
        == 2
    )


def test_video_captions_dataset_and_datamodule(full_cache, encoder):
    from video_retrieval.train.cache_data import (
        CachedRetrievalDataModule,
        CachedVideoCaptionsDataset,
    )

    out, _ = full_cache
    cache = FeatureCache.open(out)
    ds = CachedVideoCaptionsDataset(cache, split="train")
    batch = ds.collate([ds[0], ds[1]])
    assert batch["video_index"].tolist() == [0, 1]
    assert batch["text_index"].tolist() == [0, 4, 1, 7]
    assert batch["caption_video"].tolist() == [0, 0, 1, 1]
    assert torch.equal(
        batch["video_index"][batch["caption_video"]], cache.text_to_video[batch["text_index"]]
    )

    dm = CachedRetrievalDataModule(
        train_cache=str(out), val_cache=str(out), train_split="train", val_split="test",
        global_batch_size=2, eval_batch_size=4, words=False, patches=False,
    )  # fmt: skip
    dm.setup("fit")
    dm.check_encoder(encoder)
    train_batches = list(dm.train_dataloader())
    assert len(train_batches) == 2  # 4 train videos, batch 2, drop_last
    assert train_batches[0]["video"].patches is None and train_batches[0]["text"].words is None
    (val,) = list(dm.val_dataloader())
    assert val["video_index"].tolist() == [4] and val["text_index"].tolist() == [5]
    assert dm.caption_bank() == [cache.captions[j] for j in (0, 1, 2, 3, 4, 7)]
    assert dm.caption_bank_features().sentence.shape == (6, cache.embed_dim)
    with pytest.raises(UserError, match="different model"):
        dm.check_encoder(create_encoder("vr-tiny", precision="fp32", seed=1))


def test_fps_sampling_pads_to_max_frames(world, encoder, tmp_path):
    _, videos, _ = world
    out = tmp_path / "fps"
    build_cache(encoder, videos[:3], [], out, CacheSettings(fps=2.0, max_frames=3, words=False))
    cache = FeatureCache.open(out)
    assert cache.num_frames == 3 and cache.manifest["sampling"]["fps"] == 2.0
    mask = cache.video_features().mask
    assert mask[0].all() and mask[1].all()  # 2 s videos at 2 fps: 4 frames, subsampled to 3
    assert mask[2].sum() == 1  # 0.5 s video at 2 fps: one frame, padded and masked
    ts = cache.timestamps([0])[0]
    assert torch.all(ts[1:] > ts[:-1])
