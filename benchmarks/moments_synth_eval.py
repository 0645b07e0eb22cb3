"""Score a moment checkpoint on the synthetic moment world's val and test splits.

QVHighlights metrics (``vr eval moments`` definitions) and R1@0.5 by the event the query names
(appear / disappear / grow / shrink / move), with the data settings the checkpoint records (clip
pooling, context, frames per clip, motion map); ``--predictor`` instead scores the test split
through ``MomentPredictor``, the ``vr localize`` path (decode, clip encoder, motion map, sliding
windows), which is how a bundled slim checkpoint is checked.

    python benchmarks/moments_synth_eval.py CKPT [--world data/synth_moments_large]
        [--clip-encoder video_retrieval/assets/demo_clips.ckpt] [--predictor]
"""

from __future__ import annotations

import argparse
import collections
import json

KEYS = ["MR-full-R1@0.3", "MR-full-R1@0.5", "MR-full-R1@0.7", "MR-full-mAP", "MR-full-mIoU",
        "HL-min-VeryGood-Hit1"]  # fmt: skip


def _iou(a, b) -> float:
    inter = max(0.0, min(a[1], b[1]) - max(a[0], b[0]))
    union = (a[1] - a[0]) + (b[1] - b[0]) - inter
    return inter / union if union > 0 else 0.0


def by_event(preds: list[dict], gts: list[dict], world: dict) -> dict:
    """R1@0.5 per event kind; a query's event is the world event whose span is its GT window."""
    hits = collections.defaultdict(list)
    for p, g in zip(preds, gts):
        events = world["videos"][g["vid"]]["events"]
        tgt = [e for e in events
               if any(_iou((e["start_s"], e["end_s"]), w) > 0.99 for w in g["relevant_windows"])]  # fmt: skip
        kind = tgt[0]["event"].split("_")[0] if tgt else "unknown"
        top = p["pred_relevant_windows"][0][:2]
        hits[kind].append(max(_iou(top, w) for w in g["relevant_windows"]) >= 0.5)
    return {k: round(100 * sum(v) / len(v), 1) for k, v in sorted(hits.items())}


def predictor_rows(ckpt: str, world_dir: str, rows: list[dict]) -> list[dict]:
    from video_retrieval.moments.predictor import MomentPredictor

    pred = MomentPredictor.from_checkpoint(ckpt)
    per_video = collections.defaultdict(list)
    for r in rows:
        per_video[r["vid"]].append(r)
    out = []
    for vid, rs in per_video.items():
        video = pred.encode_video(f"{world_dir}/videos/{vid}.mp4")
        for r in rs:
            res = pred.predict(None, r["query"], top=10, video=video)
            out.append({"qid": r["qid"], "pred_relevant_windows": [list(m) for m in res["moments"]],
                        "pred_saliency_scores": list(res["saliency"])})  # fmt: skip
    order = {r["qid"]: i for i, r in enumerate(rows)}
    return sorted(out, key=lambda p: order[p["qid"]])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("ckpt")
    ap.add_argument("--world", default="data/synth_moments_large")
    ap.add_argument("--clip-encoder", default="video_retrieval/assets/demo_clips.ckpt")
    ap.add_argument("--cache-dir", default=".cache/moment_features")
    ap.add_argument("--predictor", action="store_true", help="test split via MomentPredictor")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    import torch

    from video_retrieval.metrics.moments import evaluate

    torch.set_num_threads(args.threads)
    world = json.load(open(f"{args.world}/world.json"))
    out: dict = {"ckpt": args.ckpt}
    if args.predictor:
        rows = [json.loads(line) for line in open(f"{args.world}/test.jsonl")]
        preds = predictor_rows(args.ckpt, args.world, rows)
        out["test"] = {k: evaluate(preds, rows)["brief"][k] for k in KEYS}
        out["test_by_event"] = by_event(preds, rows, world)
        print(json.dumps(out, indent=1))
        return
    from video_retrieval.train.moment_data import MomentDataModule
    from video_retrieval.train.moment_module import load_module, predict_split

    module = load_module(args.ckpt)
    meta = module.meta_extra
    dm = MomentDataModule(
        val_path=f"{args.world}/val.jsonl",
        test_path=f"{args.world}/test.jsonl",
        cache_dir=args.cache_dir,
        retrieval_checkpoint=args.clip_encoder,
        clip_pooling=meta["clip_pooling"],
        clip_context=meta["clip_context"],
        frames_per_clip=meta["frames_per_clip"],
        motion_grid=meta.get("motion_grid", 0),
    )
    dm.setup("validate")
    dm.setup("test")
    for split in ("val", "test"):
        gts = [it["row"] for it in dm.items[split]]
        preds = predict_split(module, dm, split)
        out[split] = {k: evaluate(preds, gts)["brief"][k] for k in KEYS}
        out[f"{split}_by_event"] = by_event(preds, gts, world)
        out[f"{split}_queries"] = len(gts)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
