"""Partial relevance: mean pooling vs CLIP-Hitchhiker's query scoring, stage 1 vs CLIPRerank.

    python benchmarks/partial_relevance.py --world data/synth_partial --work runs/partial \
        [--split test_partial] [--fps 1 | --num-frames 8 --symmetric-window] \
        [--trained ROLE=CKPT ...] [--json results.json]

Generates the partial-relevance split if ``--world`` does not exist (``vr synth retrieval --seed 0
--num-train 0 --num-test 0 --num-compositional 0 --partial 36 --codec h264_lossless``), indexes
its videos with each model (``vr index``; the demo model's CLIP towers alone, i.e. mean pooling;
the demo model with its seqTransf; any ``--trained`` checkpoint) and scores every caption of the
split against the split's videos with each reranker (``vr eval retrieval``): none (stage 1),
``query_scored`` (zero-shot query scoring, tau 0.1, over the same CLIP's stored frames),
``cliprerank`` over the index's own frames and with ``--rerank-model`` (the clip encoder
``assets/demo_clips.ckpt`` by default), ``auto`` (the default reranker), and each trained
query-dependent checkpoint as its own reranker. Prints a markdown table (t2v R@1/5/10, MdR, MnR)
and the equivalent ``vr`` commands.

``--trained ROLE=CKPT``: ROLE is a row label (e.g. ``query_scored``, ``ucofia``, ``mean``); a
query-dependent checkpoint indexes mean-pooled (its stage 1) and reranks with itself; a
query-independent one is a stage 1 of its own. UCoFiA needs stored patch tokens: ``--patches``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ASSETS = REPO / "video_retrieval" / "assets"
SEED = 0
NUM_PARTIAL = 36


def ensure_world(world: Path) -> None:
    if (world / "captions.jsonl").is_file():
        return
    from video_retrieval.datasets.synth_retrieval import generate_retrieval

    s = generate_retrieval(
        world,
        seed=SEED,
        codec="h264_lossless",
        num_train=0,
        num_test=0,
        num_compositional=0,
        num_partial=NUM_PARTIAL,
    )
    print(f"generated {world}: {json.dumps(s.get('partial'))}", flush=True)


def split_videos(world: Path, split: str) -> list[str]:
    from video_retrieval.index.evaluate import read_captions

    seen: dict[str, None] = {}
    for video, _ in read_captions(world / "captions.jsonl", split):
        seen.setdefault(video, None)
    return list(seen)


def extract_towers(ckpt: Path, out: Path) -> Path:
    """The CLIP towers of a ``vr train`` checkpoint as a ``save_encoder`` file: indexing with it
    pools frames by mean, i.e. the same trained CLIP without its temporal aggregator."""
    from video_retrieval.models.checkpoints import load_retrieval_model

    if not out.is_file():
        enc, _, _ = load_retrieval_model(str(ckpt))
        enc.save_encoder(out)
    return out


def build_index(videos, out: Path, checkpoint: str, sampling: dict, patches: int):
    from video_retrieval import Index

    if checkpoint.endswith(".safetensors"):  # an encoder file names its model in its spec
        from safetensors import safe_open

        with safe_open(checkpoint, "pt") as f:
            sampling = {**sampling, "model": json.loads(f.metadata()["spec"])["model"]}
    t0 = time.perf_counter()
    idx = Index.build(
        videos, out, checkpoint=checkpoint, batch_size=64, patches=patches, **sampling
    )
    print(f"indexed {len(idx)} videos -> {out} ({time.perf_counter() - t0:.1f} s)", flush=True)
    return idx


def sampling_flags(sampling: dict) -> str:
    if sampling.get("fps"):
        return f"--fps {sampling['fps']:g}"
    out = f"--num-frames {sampling['num_frames']}"
    return out + (" --symmetric-window" if sampling.get("symmetric_window") else "")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--world", default="data/synth_partial")
    ap.add_argument("--work", default="runs/partial")
    ap.add_argument("--split", default="test_partial")
    g = ap.add_mutually_exclusive_group()
    g.add_argument("--fps", type=float, default=None, help="index sampling (default 1 fps)")
    g.add_argument("--num-frames", type=int, default=None)
    ap.add_argument("--symmetric-window", action="store_true")
    ap.add_argument("--checkpoint", default=str(ASSETS / "demo_retrieval.ckpt"))
    ap.add_argument("--rerank-model", default=str(ASSETS / "demo_clips.ckpt"))
    ap.add_argument("--trained", action="append", default=[], metavar="ROLE=CKPT")
    ap.add_argument("--patches", type=int, default=16, help="patch tokens stored for UCoFiA")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from video_retrieval.index.evaluate import evaluate_retrieval, read_caption_lines
    from video_retrieval.index.search import resolve_rerank
    from video_retrieval.models.checkpoints import load_retrieval_model

    world, work = Path(args.world), Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    ensure_world(world)
    videos = split_videos(world, args.split)
    captions = read_caption_lines(world / "captions.jsonl", args.split)
    if args.num_frames:
        sampling = {"num_frames": args.num_frames, "symmetric_window": args.symmetric_window}
    else:
        sampling = {"fps": args.fps or 1.0}
    print(f"{len(videos)} videos, {len(captions)} captions ({args.split}), {sampling}", flush=True)

    demo = Path(args.checkpoint)
    towers = extract_towers(demo, work / f"{demo.stem}.towers.safetensors")
    rm = args.rerank_model
    # (model label, index name, checkpoint, [(reranker label, rerank, rerank_model)])
    plans = [
        (
            f"{demo.name} CLIP towers (mean pooling)",
            "towers",
            str(towers),
            [
                ("mean pooling (stage 1)", "none", None),
                ("query scoring, zero-shot (tau 0.1)", "query_scored", None),
                ("stage 1 + CLIPRerank (same CLIP's frames)", "cliprerank", None),
                (f"stage 1 + CLIPRerank (--rerank-model {Path(rm).name})", "cliprerank", rm),
            ],
        ),
        (
            f"{demo.name} (seqTransf)",
            "demo",
            str(demo),
            [
                ("seqTransf (stage 1)", "none", None),
                ("stage 1 + CLIPRerank (same CLIP's frames)", "cliprerank", None),
                (f"stage 1 + CLIPRerank (--rerank-model {Path(rm).name})", "cliprerank", rm),
                ("query scoring, zero-shot (tau 0.1)", "query_scored", None),
            ],
        ),
    ]
    for spec in args.trained:
        role, _, ckpt = spec.partition("=")
        _, agg, _ = load_retrieval_model(ckpt)
        if agg.query_dependent:
            rows = [
                ("mean pooling of its CLIP (stage 1)", "none", None),
                (f"{agg.name}, trained (reranks stage 1)", ckpt, None),
                ("stage 1 + CLIPRerank (same CLIP's frames)", "cliprerank", None),
            ]
            if agg.name != "query_scored":
                rows.insert(1, ("query scoring, zero-shot (tau 0.1)", "query_scored", None))
        else:
            rows = [
                (f"{agg.name} (stage 1)", "none", None),
                ("stage 1 + CLIPRerank (same CLIP's frames)", "cliprerank", None),
                ("query scoring, zero-shot (tau 0.1)", "query_scored", None),
            ]
        plans.append((f"{role}: {Path(ckpt).name}", role, ckpt, rows))

    results = []
    for label, name, ckpt, rows in plans:
        patches = args.patches if name == "ucofia" else 0
        idx = build_index(videos, work / f"idx_{name}_{args.split}", ckpt, sampling, patches)
        auto = resolve_rerank(idx, "auto")
        cmd_index = (
            f"vr index {world}/videos/<{args.split} videos> --index {work}/idx_{name} "
            f"--checkpoint {ckpt} {sampling_flags(sampling)}"
            + (" --model vr-tiny" if ckpt.endswith(".safetensors") else "")
            + (f" --patches {patches}" if patches else "")
        )
        print(f"\n## {label}\n  {cmd_index}\n  default reranker (auto): {auto}", flush=True)
        for rlabel, rerank, model in rows:
            t0 = time.perf_counter()
            res = evaluate_retrieval(
                idx, captions, rerank=rerank, candidates=100, rerank_model=model
            )
            t2v = res["t2v"]
            row = {
                "model": label,
                "method": rlabel,
                "rerank": rerank,
                "rerank_model": model,
                "default": rerank == auto and model is None,
                "queries": res["queries"],
                "videos": res["videos"],
                "seconds": round(time.perf_counter() - t0, 1),
                **{k: round(float(t2v[k]), 2) for k in ("R1", "R5", "R10", "MdR", "MnR")},
            }
            results.append(row)
            extra = f" --rerank-model {model}" if model else ""
            print(
                f"  {rlabel:<58} R@1 {row['R1']:5.1f}  R@5 {row['R5']:5.1f}  R@10 {row['R10']:5.1f}"
                f"  MdR {row['MdR']:4.1f}  MnR {row['MnR']:5.2f}   ({row['seconds']} s)\n"
                f"      vr eval retrieval --index {work}/idx_{name} --captions "
                f"{world}/captions.jsonl --split {args.split} --rerank {rerank}{extra}",
                flush=True,
            )
    print("\n| model | method | R@1 | R@5 | R@10 | MdR | MnR |")
    print("|---|---|---|---|---|---|---|")
    for r in results:
        star = " (default)" if r["default"] else ""
        print(
            f"| {r['model']} | {r['method']}{star} | {r['R1']:.1f} | {r['R5']:.1f} | "
            f"{r['R10']:.1f} | {r['MdR']:.1f} | {r['MnR']:.2f} |"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
