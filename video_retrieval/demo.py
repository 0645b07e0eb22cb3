"""The offline walk-through behind ``vr demo`` / ``make demo``.

It exercises the whole system on a freshly generated synthetic collection (a seed the demo model
never saw): generate videos -> index them with the committed demo model -> search -> localize a
query in a long video (PNG plot) -> retrieval and moment metrics. No network, no GPU.

The demo model is ``video_retrieval/assets/demo_retrieval.ckpt`` (vr-tiny CLIP + seqTransf,
trained from scratch by ``vr train`` on the synthetic world) and, for moments, the clip encoder
``video_retrieval/assets/demo_clips.ckpt`` (that model fine-tuned on moment clips,
``configs/moments_synth_clips.yaml``) whose pooled clip features the zero-shot localizer scores,
or a QD-DETR moment head ``video_retrieval/assets/demo_moments.ckpt`` when one is bundled. The
README names the commands that reproduce them.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from video_retrieval.errors import UserError
from video_retrieval.models.assets import ASSETS, DEMO_CLIPS, DEMO_MOMENTS, DEMO_RETRIEVAL  # noqa: F401 - the demo's public names


def _say(msg: str = "") -> None:
    print(msg, flush=True)


def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _fmt_metrics(d: dict, keys) -> str:
    return "  ".join(f"{k} {d[k]:.1f}" for k in keys if k in d)


def generate_collection(out: Path, seed: int, num_videos: int, moment_videos: int) -> dict:
    """A retrieval collection and a few long moment videos, from a seed unseen in training."""
    from video_retrieval.datasets.synth_moments import generate_moments
    from video_retrieval.datasets.synth_retrieval import generate_retrieval

    retrieval = generate_retrieval(
        out / "collection",
        seed=seed,
        num_train=0,
        num_test=num_videos,
        num_compositional=0,
        min_captions=2,
        max_captions=3,
    )
    moments = generate_moments(
        out / "long_videos",
        seed=seed,
        num_videos=moment_videos,
        val_fraction=0.0,
        test_fraction=1.0,
        min_duration=40,
        max_duration=90,
        queries_per_video=4,
    )
    return {"retrieval": retrieval, "moments": moments}


def run_searches(index, captions: list[tuple[str, str]], n: int, k: int) -> list[dict]:
    """Search the first caption of ``n`` different videos; print the ranked hits."""
    seen, shown = set(), []
    for video, caption in captions:
        if video in seen:
            continue
        seen.add(video)
        hits = index.search(caption, k=k)  # the default reranker (search.default_rerank)
        found = next((h.rank for h in hits if h.video == video), None)
        _say(f'\n  query: "{caption}"   (its video: {Path(video).name})')
        for h in hits:
            mark = "  <- the described video" if h.video == video else ""
            s, e = h.moment.start, h.moment.end
            _say(
                f"    {h.rank}. {Path(h.video).name:<14} score {h.score:.3f}  moment {s:5.1f}-{e:5.1f} s{mark}"
            )
        shown.append({"query": caption, "video": video, "found_at": found})
        if len(shown) >= n:
            break
    return shown


def localizer_name(result: dict) -> str:
    """How a localization result was made, in words (the head's name or the zero-shot kind)."""
    if result.get("method") == "head":
        return f"{result.get('head') or 'trained'} head"
    if result.get("features") == "pooled_clips":
        return "zero-shot, pooled clips"
    return "zero-shot"


def moment_predictions(
    queries: list[dict],
    videos_dir: Path,
    checkpoint: Path | None,
    encoder,
    clip_encoder: Path | None = None,
):
    """QVHighlights-style predictions for every query, from the head or the zero-shot baseline
    (over pooled clip windows of ``clip_encoder`` when given, else ``encoder``'s frames)."""
    preds = []
    if checkpoint is not None:
        from video_retrieval.moments.predictor import MomentPredictor

        predictor = MomentPredictor.from_checkpoint(checkpoint)
        cache: dict[str, dict] = {}
        for q in queries:
            path = videos_dir / f"{q['vid']}.mp4"
            video = cache.setdefault(q["vid"], predictor.encode_video(path))
            out = predictor.predict(path, q["query"], top=10, video=video)
            preds.append(
                {
                    "qid": q["qid"],
                    "vid": q["vid"],
                    "pred_relevant_windows": out["moments"],
                    "pred_saliency_scores": out["saliency"],
                }
            )
        return preds
    from video_retrieval.moments.localize import ZeroShotLocalizer

    zs = ZeroShotLocalizer.build(clip_encoder=clip_encoder, encoder=encoder)
    for q in sorted(queries, key=lambda q: q["vid"]):  # each video encoded once
        rows, sims, _ = zs.predict(videos_dir / f"{q['vid']}.mp4", q["query"], top=10)
        preds.append(
            {
                "qid": q["qid"],
                "vid": q["vid"],
                "pred_relevant_windows": [[float(a), float(b), float(c)] for a, b, c in rows],
                "pred_saliency_scores": [float(x) for x in sims],
            }
        )
    return preds


def run_demo(
    out: str | Path = "demo_out",
    seed: int = 20261125,
    num_videos: int = 48,
    moment_videos: int = 3,
    searches: int = 4,
    retrieval_checkpoint: str | Path | None = None,
    moment_checkpoint: str | Path | None = None,
    clip_checkpoint: str | Path | None = None,
) -> dict:
    """Run the walk-through; returns (and writes to ``out/summary.json``) what it measured."""
    from video_retrieval.index.api import Index
    from video_retrieval.index.evaluate import evaluate_retrieval, read_captions
    from video_retrieval.metrics.moments import evaluate
    from video_retrieval.moments.localize import localize, top_hit
    from video_retrieval.moments.plot import curve_label

    for name, value, lo in (("num_videos", num_videos, 4), ("moment_videos", moment_videos, 1),
                            ("searches", searches, 0)):  # fmt: skip
        if int(value) < lo:
            raise UserError(f"--{name.replace('_', '-')} must be at least {lo}, got {value}")
    t0 = time.perf_counter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    ckpt = Path(retrieval_checkpoint) if retrieval_checkpoint else DEMO_RETRIEVAL
    mckpt = Path(moment_checkpoint) if moment_checkpoint else DEMO_MOMENTS
    cckpt = Path(clip_checkpoint) if clip_checkpoint else DEMO_CLIPS
    cckpt = cckpt if cckpt.is_file() else None
    if not ckpt.is_file():
        raise UserError(f"demo model not found: {ckpt} (see README: 'Reproduce the demo model')")

    _say(f"[1/5] Generating a synthetic collection (seed {seed}, unseen in training) in {out}/")
    world = generate_collection(out, seed, num_videos, moment_videos)
    coll = out / "collection"
    _say(
        f"      {world['retrieval']['videos']['test']} short videos with captions, "
        f"{world['moments']['videos']['test']} long videos with "
        f"{world['moments']['queries']['test']} moment queries"
    )

    long_dir = out / "long_videos"
    _say(
        f"\n[2/5] Indexing {coll / 'videos'} and {long_dir / 'videos'} with the demo model {ckpt.name}"
    )
    # the checkpoint's own sampling (8 frames between the first and last frame centres)
    index = Index.build([coll / "videos", long_dir / "videos"], out / "index",
                        checkpoint=str(ckpt), batch_size=64)  # fmt: skip
    summ = index.build_summary or {}
    n_long = len(list((long_dir / "videos").glob("*.mp4")))
    _say(
        f"      indexed {len(index)} videos ({len(index) - n_long} short, {n_long} long; "
        f"{summ.get('frames', '?')} frames), index at {out / 'index'}"
    )

    from video_retrieval.index.search import resolve_rerank

    default = resolve_rerank(index, "auto")
    _say(f"\n[3/5] Searching (stage 1: FAISS over pooled seqTransf vectors; stage 2: {default}, "
         "the default reranker for this index; [5/5] measures both)")  # fmt: skip
    captions = read_captions(coll / "captions.jsonl")
    shown = run_searches(index, captions, searches, k=3)

    _say("\n[4/5] Localizing a query inside a long video")
    queries = _read_jsonl(long_dir / "test.jsonl")
    q = queries[0]
    plot = out / "localize.png"
    use_head = mckpt.is_file()
    result = localize(
        long_dir / "videos" / f"{q['vid']}.mp4",
        q["query"],
        checkpoint=str(mckpt) if use_head else None,
        encoder=None if use_head else index.models()[0],
        clip_encoder=str(cckpt) if cckpt is not None and not use_head else None,
        top=3,
        plot=plot,
        ground_truth=q["relevant_windows"],
    )
    _say(f'      video {q["vid"]}.mp4 ({q["duration"]} s), query "{q["query"]}"')
    _say(f"      ground truth: {q['relevant_windows']}")
    for i, m in enumerate(result["moments"], 1):
        _say(f"      {i}. {m['start']:6.1f} - {m['end']:6.1f} s   score {m['score']:.3f}")
    hit = top_hit(result, q["relevant_windows"])
    if hit is not None:
        (s, e), (gs, ge) = hit["window"], hit["ground_truth"]
        verdict = "hits" if hit["hit"] else "misses"
        sign = ">=" if hit["hit"] else "<"
        _say(f"      the top window {s:.1f}-{e:.1f} s {verdict} the ground truth {gs:g}-{ge:g} s "
             f"(IoU {hit['iou']:.2f} {sign} 0.5)")  # fmt: skip
    how = curve_label(result).replace("\n", " ")
    _say(f"      ({localizer_name(result)}; curve: {how}) plot written to {plot}")

    _say("\n[5/5] Metrics on this collection")
    ret = {
        rr: evaluate_retrieval(index, captions, rerank=rr)["t2v"] for rr in ("none", "cliprerank")
    }
    if default not in ret:
        ret[default] = evaluate_retrieval(index, captions, rerank=default)["t2v"]
    chance = 100.0 / max(1, len(index))
    _say(f"      retrieval: {len(captions)} captions of the short videos, each ranking all "
         f"{len(index)} videos")  # fmt: skip
    label = {"none": "stage 1 only", "cliprerank": "+ CLIPRerank"}
    for rr, m in ret.items():
        mark = "  <- the default search" if rr == default else ""
        _say(f"      retrieval t2v ({label.get(rr, '+ ' + rr):>14}): "
             f"{_fmt_metrics(m, ('R1', 'R5', 'R10', 'MdR', 'MnR'))}{mark}")  # fmt: skip
    why = ""
    if ret["cliprerank"]["R1"] < ret["none"]["R1"]:
        why = (f"; CLIPRerank's order-blind max-over-frames term lowers R1 here "
               f"({ret['none']['R1']:.1f} -> {ret['cliprerank']['R1']:.1f}), as BENCHMARKS.md measured")  # fmt: skip
    _say(f"      (chance R1 {chance:.1f}{why})")
    preds = moment_predictions(
        queries,
        long_dir / "videos",
        mckpt if use_head else None,
        index.models()[0],
        clip_encoder=cckpt,
    )
    mom = evaluate(preds, queries)["brief"]
    keys = ("MR-full-R1@0.5", "MR-full-R1@0.7", "MR-full-mAP", "MR-full-mIoU")
    method = localizer_name(result)
    _say(f"      moments ({method}): "
         + "  ".join(f"{k.replace('MR-full-', '')} {mom[k]:.1f}" for k in keys if k in mom))  # fmt: skip

    summary = {
        "seed": seed,
        "videos": len(index),
        "searches": shown,
        "localize": result,
        "localize_top_hit": hit,
        "retrieval": ret,
        "retrieval_default": default,
        "retrieval_chance_R1": chance,
        "moments": mom,
        "moment_method": result["method"],
        "plot": str(plot),
        "seconds": round(time.perf_counter() - t0, 1),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    _say(f"\nDone in {summary['seconds']} s. Summary: {out / 'summary.json'}")
    sys.stdout.flush()
    return summary
