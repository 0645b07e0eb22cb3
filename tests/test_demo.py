"""`vr demo` on a reduced collection with the committed demo models (no network, no GPU)."""

import json

from video_retrieval.cli import main
from video_retrieval.models.assets import DEMO_CLIPS, DEMO_MOMENTS, DEMO_RETRIEVAL

PNG = b"\x89PNG\r\n\x1a\n"


def test_committed_demo_models_are_small_and_loadable():
    from video_retrieval.models.checkpoints import load_retrieval_model

    assert DEMO_RETRIEVAL.is_file()
    assert DEMO_RETRIEVAL.stat().st_size < 12 * 2**20  # a few MB, committed to git
    _enc, agg, meta = load_retrieval_model(DEMO_RETRIEVAL)
    assert meta["aggregator"] == "seq_transformer" and not agg.query_dependent
    if DEMO_CLIPS.is_file():  # the clip encoder for zero-shot localization
        assert DEMO_CLIPS.stat().st_size < 12 * 2**20
        _enc, agg, meta = load_retrieval_model(DEMO_CLIPS)
        assert meta["aggregator"] == "seq_transformer" and meta["num_frames"] == 8


def test_demo_reduced(tmp_path, capsys):
    out = tmp_path / "demo"
    rc = main(
        ["demo", "--out", str(out), "--num-videos", "16", "--moment-videos", "1",
         "--searches", "2", "--seed", "7"]
    )  # fmt: skip
    printed = capsys.readouterr().out
    assert rc == 0
    s = json.loads((out / "summary.json").read_text())
    assert s["videos"] == 16 + 1 and len(s["searches"]) == 2  # the long video is indexed too
    for step in ("[1/5]", "[2/5]", "[3/5]", "[4/5]", "[5/5]"):
        assert step in printed
    assert "<- the described video" in printed  # a search found its own video among the top 3
    chance = s["retrieval_chance_R1"]
    assert chance == 100 / (16 + 1)  # every indexed video is a candidate, the long one too
    for rerank in ("none", "cliprerank"):  # a trained model on an unseen seed: far above chance
        assert s["retrieval"][rerank]["R1"] > 3 * chance, s["retrieval"]
        assert s["retrieval"][rerank]["MnR"] < 16 / 2
    # the default search is never a loss against stage 1 alone, and the demo says which it is
    default = s["retrieval"][s["retrieval_default"]]
    assert (
        default["R1"] >= s["retrieval"]["none"]["R1"]
        and default["MnR"] <= s["retrieval"]["none"]["MnR"]
    )
    assert "<- the default search" in printed
    # the Moment-DETR head is used when one is bundled, else the zero-shot baseline (over the
    # bundled clip encoder's pooled clips when it is there)
    method = "head" if DEMO_MOMENTS.is_file() else "zero_shot"
    assert s["moment_method"] == method and s["localize"]["method"] == method
    if method == "zero_shot":
        features = "pooled_clips" if DEMO_CLIPS.is_file() else "frames"
        assert s["localize"]["features"] == features
    assert {"MR-full-R1@0.5", "MR-full-R1@0.7", "MR-full-mAP"} <= set(s["moments"])
    moments = s["localize"]["moments"]
    assert moments and all(0 <= m["start"] < m["end"] <= 90 for m in moments)
    png = out / "localize.png"
    assert png.read_bytes()[:8] == PNG and png.stat().st_size > 10_000
    # the demo says in words whether its top window hits the ground truth (IoU >= 0.5), checked
    # here against the ground truth the generator wrote for that video and query
    rows = [json.loads(x) for x in (out / "long_videos" / "test.jsonl").read_text().splitlines()]
    row = next(r for r in rows if r["query"] == s["localize"]["query"]
               and s["localize"]["video"].endswith(f"{r['vid']}.mp4"))  # fmt: skip
    top = moments[0]

    def iou(a, b):
        inter = max(0.0, min(a[1], b[1]) - max(a[0], b[0]))
        return inter / (max(a[1], b[1]) - min(a[0], b[0]))

    best = max(iou((top["start"], top["end"]), gt) for gt in row["relevant_windows"])
    hit = s["localize_top_hit"]
    assert hit["window"] == [top["start"], top["end"]]
    assert abs(hit["iou"] - best) < 1e-9
    verdict = "hits" if best >= 0.5 else "misses"
    assert hit["hit"] == (best >= 0.5)
    assert f"{verdict} the ground truth" in printed and f"IoU {best:.2f}" in printed
