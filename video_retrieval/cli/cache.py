"""``vr cache``: encode a dataset once with a frozen CLIP into a feature cache directory.

    vr cache --captions OUT/captions.jsonl --split train --out cache/train --pretrained open_clip_pytorch_model.bin
    vr cache --videos videos/ --out cache/videos --patches topk --patch-topk 16
    vr cache --dataset synth --root data/synth --split train --frame-size 64 --symmetric-window \
             --out cache/train      # exactly the frames RetrievalDataModule(...) trains on

Rerunning the same command after an interruption resumes it; on a finished cache it does nothing.
"""

from __future__ import annotations

import argparse
import json
import sys

from video_retrieval.cli.common import add_progress_flag
from video_retrieval.errors import UserError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument(
        "--videos", help="a folder of videos (recursive) or a text file listing one path per line"
    )
    src.add_argument(
        "--captions", help="captions.jsonl ({'video', 'caption', 'split'} rows): videos + captions"
    )
    src.add_argument(
        "--dataset",
        choices=["msrvtt", "didemo", "jsonl", "synth"],
        help="a training dataset (RetrievalDataModule loaders) under --root; needs --split",
    )
    parser.add_argument("--root", default=None, help="with --dataset: the dataset folder")
    parser.add_argument(
        "--split",
        default=None,
        help="--captions: keep only this split; --dataset: train|val|test|compositional",
    )
    parser.add_argument("--out", required=True, help="cache directory")
    from video_retrieval.cli.common import add_model_arguments, bounded

    add_model_arguments(
        parser,
        "local CLIP weights (an open_clip state dict, a save_encoder file) or a vr train "
        "retrieval checkpoint (its encoder)",
    )
    parser.add_argument(
        "--precision", default="auto", choices=["auto", "fp32", "bf16"], help="encoder autocast"
    )
    parser.add_argument("--device", default="cpu", help="torch device (default cpu)")
    frames = parser.add_mutually_exclusive_group()
    frames.add_argument(
        "--num-frames",
        type=bounded("num_frames"),
        default=None,
        help="T uniformly sampled frames (default 12)",
    )
    frames.add_argument(
        "--fps", type=bounded("fps"), default=None, help="sample F frames per second"
    )
    parser.add_argument(
        "--max-frames", type=int, default=12, help="with --fps: uniformly subsample to at most this"
    )
    parser.add_argument(
        "--decode-size", type=int, default=None, help="resize short side while decoding"
    )
    parser.add_argument(
        "--frame-size",
        type=int,
        default=None,
        help="decode at short side S + centre square crop, as RetrievalDataModule(frame_size=S)",
    )
    parser.add_argument(
        "--symmetric-window",
        action="store_true",
        help="sample between first and last frame centres (RetrievalDataModule symmetric_window)",
    )
    parser.add_argument(
        "--patches",
        default="none",
        choices=["none", "all", "topk"],
        help="store projected patch tokens: none, all [N,T,P,D], or topk (highest cosine to CLS)",
    )
    parser.add_argument("--patch-topk", type=int, default=16, help="K patches kept per frame")
    parser.add_argument("--max-words", type=int, default=32, help="token length incl. SOT/EOT")
    parser.add_argument("--no-words", action="store_true", help="do not store word features")
    parser.add_argument(
        "--batch-size", type=bounded("batch_size"), default=64, help="frames per encoder batch"
    )
    parser.add_argument("--chunk-size", type=int, default=16, help="videos per journaled chunk")
    parser.add_argument(
        "--workers", type=bounded("workers"), default=2, help="decoding threads (default 2)"
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an existing cache")
    add_progress_flag(parser, "--quiet")  # --quiet: its earlier name
    parser.add_argument("--json", action="store_true", help="print a JSON summary")


def cache_encoder(args) -> tuple:
    """(frozen encoder, weights record) for the model flags (``models.weights``)."""
    from video_retrieval.encoders.factory import create_encoder
    from video_retrieval.models.weights import (
        checkpoint_kind,
        describe_weights,
        resolve_encoder_args,
    )

    if args.checkpoint and checkpoint_kind(args.checkpoint) != "encoder":
        if checkpoint_kind(args.checkpoint) == "moment" or args.model or args.pretrained:
            raise UserError(
                f"--checkpoint {args.checkpoint}: give CLIP weights or a vr train retrieval "
                "checkpoint (alone: it names its own model)"
            )
        from video_retrieval.models.checkpoints import load_retrieval_model

        encoder = load_retrieval_model(args.checkpoint, args.device, args.precision)[0]
        return encoder.eval(), describe_weights(None, args.checkpoint)
    kw = resolve_encoder_args(
        args.model, args.pretrained, args.checkpoint, "open_clip", args.random_weights
    )
    encoder = create_encoder(**kw, precision=args.precision, device=args.device)
    return encoder.eval(), describe_weights(encoder.spec)


def run(args: argparse.Namespace) -> int:
    from video_retrieval.models.weights import warn_if_random
    from video_retrieval.train.cache_build import build_cache
    from video_retrieval.train.cache_items import (
        items_from_captions_jsonl,
        items_from_dataset,
        videos_from_list_or_dir,
    )
    from video_retrieval.train.cache_settings import CacheSettings

    settings = CacheSettings(
        num_frames=args.num_frames if args.num_frames is not None else 12,
        fps=args.fps,
        max_frames=args.max_frames,
        decode_size=args.decode_size,
        patches=args.patches,
        patch_topk=args.patch_topk,
        max_words=args.max_words,
        words=not args.no_words,
        frame_size=args.frame_size,
        symmetric_window=args.symmetric_window,
    )
    if args.dataset:
        if not args.root or not args.split:
            raise UserError("--dataset needs --root DIR and --split train|val|test|compositional")
        videos, captions = items_from_dataset(args.dataset, args.root, args.split)
    elif args.captions:
        videos, captions = items_from_captions_jsonl(args.captions, split=args.split)
    else:
        videos, captions = videos_from_list_or_dir(args.videos), []
    encoder, weights = cache_encoder(args)
    warn_if_random(weights)
    log = None if args.no_progress else (lambda msg: print(msg, file=sys.stderr, flush=True))
    report = build_cache(
        encoder,
        videos,
        captions,
        args.out,
        settings,
        batch_size=args.batch_size,
        chunk_size=args.chunk_size,
        num_workers=args.workers,
        overwrite=args.overwrite,
        log=log,
    )
    summary = {
        "out": report.out_dir,
        "videos": report.num_videos,
        "captions": report.num_texts,
        "failed": len(report.failures),
        "failures": report.failures,
        "resumed": report.resumed,
        "up_to_date": report.up_to_date,
        "seconds": round(report.seconds, 3),
        "weights": weights,
    }
    if args.json:
        print(json.dumps(summary))
    else:
        state = "up to date" if report.up_to_date else ("resumed" if report.resumed else "built")
        print(
            f"cache {state}: {report.num_videos} videos ({len(report.failures)} failed), "
            f"{report.num_texts} captions -> {report.out_dir} ({report.seconds:.1f} s)"
        )
        for f in report.failures:
            print(f"  failed: {f['path']}: {f['reason']}")
    return 0
