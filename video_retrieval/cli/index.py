"""``vr index VIDEOS_OR_FOLDERS... --index DIR``: batch, resumable, incremental indexing."""

from __future__ import annotations

import json
import sys

from video_retrieval.cli.common import add_model_arguments, bounded, shown
from video_retrieval.errors import UserError


def add_arguments(parser) -> None:
    parser.add_argument(
        "inputs",
        nargs="*",
        metavar="VIDEO_OR_FOLDER",
        help="video files and/or folders (recursive)",
    )
    parser.add_argument(
        "--index", required=True, metavar="DIR", help="index directory (created or updated)"
    )
    add_model_arguments(
        parser,
        "a vr train retrieval checkpoint (its model and frame sampling are used), a file "
        "written by save_encoder, or an open_clip state dict (.bin/.pt/.safetensors) for --model",
    )
    parser.add_argument(
        "--backend",
        default="open_clip",
        choices=["open_clip", "hf"],
        help="hf: --model is a Hugging Face CLIP directory (or hub id)",
    )
    g = parser.add_mutually_exclusive_group()
    g.add_argument(
        "--fps",
        type=bounded("fps"),
        default=None,
        help="frames sampled per second (default: the checkpoint's or the index's own "
        "sampling, else 1)",
    )
    g.add_argument(
        "--num-frames",
        type=bounded("num_frames"),
        default=None,
        help="frames per video, evenly spread",
    )
    parser.add_argument(
        "--batch-size", type=bounded("batch_size"), default=64, help="frames per encoder batch"
    )
    parser.add_argument(
        "--patches",
        type=bounded("patches"),
        default=None,
        metavar="K",
        help="also store K projected patch tokens per frame (closest to CLS), so that UCoFiA "
        "can rerank (default: the index's own setting, 0 for a new index)",
    )
    parser.add_argument(
        "--precision",
        default="auto",
        choices=["auto", "fp32", "bf16"],
        help="encoder precision (auto: bf16 autocast where the CPU/GPU supports it)",
    )
    parser.add_argument(
        "--workers", type=bounded("workers"), default=2, help="DataLoader workers decoding videos"
    )
    parser.add_argument(
        "--devices",
        type=bounded("devices"),
        default=1,
        help="processes per node (Lightning DDP on CPU) for encoding",
    )
    parser.add_argument(
        "--num-nodes",
        type=bounded("num_nodes"),
        default=1,
        help="machines (Lightning multi-node DDP over a shared filesystem; run the same command "
        "on every node with MASTER_ADDR, MASTER_PORT and NODE_RANK set, or under torchrun / srun)",
    )
    parser.add_argument(
        "--shard-size", type=bounded("shard_size"), default=64, help="videos per shard (at most)"
    )
    from video_retrieval.index.ann import KINDS

    parser.add_argument(
        "--ann",
        default=None,
        choices=["auto", *KINDS],
        help="FAISS index type: flat (exact), hnsw, ivf, or compressed (fp16, sq8, hnsw-sq8, "
        "ivf-sq8, ivf-pq; re-ranked exactly from the stored vectors); auto: by collection size "
        "and --max-memory (default: the index's own choice, auto for a new index)",
    )
    parser.add_argument(
        "--target-recall",
        type=bounded("target_recall"),
        default=None,
        help="approximate kinds: recall@10 (measured on the collection) the search parameter is "
        "tuned to reach; exact search when it cannot be reached (default: the index's own, 0.95)",
    )
    parser.add_argument(
        "--max-memory",
        default=None,
        metavar="SIZE",
        help="memory budget of the ANN index for --ann auto (e.g. 4G; default half the RAM)",
    )
    parser.add_argument(
        "--recall-captions",
        default=None,
        metavar="FILE",
        help="captions.jsonl or a text file (one query per line): also measure recall on these "
        "text queries",
    )
    parser.add_argument(
        "--recall-sample",
        type=bounded("recall_sample"),
        default=1000,
        help="collection vectors (each with its own row left out of its answers, kept out of the quantizer training) and at most as many captions that recall is measured on",
    )
    parser.add_argument(
        "--store",
        default=None,
        choices=["faiss", "milvus"],
        help="where the vectors go: faiss (files in --index) or milvus (pooled vectors and "
        "frames in Milvus; --index keeps the metadata) (default: the index's own; faiss for a "
        "new index, milvus when a --milvus-* option is given)",
    )
    parser.add_argument(
        "--milvus-uri",
        default=None,
        metavar="URI",
        help="--store milvus: a Milvus Lite file (PATH.db, embedded) or a server "
        "(http://host:19530) (default: the index's own; INDEX/milvus.db for a new index)",
    )
    parser.add_argument(
        "--milvus-collection",
        default=None,
        metavar="NAME",
        help="--store milvus: prefix of the collections NAME_videos, NAME_frames (and "
        "NAME_patches) (default: the index's own; vr_ + the index folder's name)",
    )
    parser.add_argument(
        "--milvus-token",
        default=None,
        metavar="TOKEN",
        help="--store milvus: the server's token (user:password or an API key; never written "
        "to the index; default: $VR_MILVUS_TOKEN, which every vr command reads)",
    )
    parser.add_argument(
        "--prune", action="store_true", help="drop indexed files that no longer exist"
    )
    parser.add_argument(
        "--repair",
        action="store_true",
        help="rebuild a damaged index from every file that survives, moving what it cannot "
        "use to INDEX/quarantine/ (no inputs needed; exit 1 when a video was lost)",
    )
    parser.add_argument(
        "--verify",
        action="store_true",
        help="check every file of the index against its recorded size and checksum",
    )
    parser.add_argument(
        "--no-wait",
        action="store_true",
        help="exit at once when another vr index is writing the index (default: wait)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")


def _print_summary(s: dict) -> None:
    print(
        f"indexed {s['encoded']} video(s) ({s['frames_encoded']} frames, "
        f"{s['frames_per_s']:.1f} frames/s on {s['device']}); "
        f"{s['new']} new, {s['changed']} changed, {s['unchanged']} unchanged, {s['pruned']} pruned"
    )
    from video_retrieval.index.ann import summary_line
    from video_retrieval.models.weights import weights_line

    print(
        f"index {s['index']}: {s['videos']} videos, {s['frames']} frames, "
        f"ANN {summary_line(s['ann'])}"
    )
    if s.get("store", {}).get("kind") == "milvus":
        names = ", ".join(n for n in s["store"]["collections"].values() if n)
        print(f"vectors in Milvus {s['store']['uri']}: {names}")
    print(f"weights: {weights_line(s['weights'])}; sampling: {s['sampling']}")
    if s["missing"]:
        print(f"{s['missing']} indexed file(s) no longer exist (use --prune to drop them)")
    if s["failed"]:
        print(f"{len(s['failed'])} file(s) could not be indexed (see failures.jsonl):")
        for f in s["failed"]:
            print(f"  {shown(f['path'])}: {f['reason']}")


def _print_repair(s: dict) -> None:
    from video_retrieval.index.ann import summary_line

    print(
        f"repaired {s['index']}: {s['videos']} videos, {s['frames']} frames, "
        f"ANN {summary_line(s['ann'])}"
    )
    print(f"kept {s['kept']} video(s) from the surviving files", end="")
    print("; manifest.json rebuilt" if s["manifest_rebuilt"] else "")
    if s["reencoded"]:
        print(f"re-encoded {len(s['reencoded'])} video(s) from their source files:")
        for path in s["reencoded"]:
            print(f"  {shown(path)}")
    if s["quarantined"]:
        print(f"moved {len(s['quarantined'])} unusable file(s) aside (not deleted):")
        for path in s["quarantined"]:
            print(f"  {shown(path)}")
    if s["lost"]:
        print(f"LOST {len(s['lost'])} video(s): their frames and their source files are gone:")
        for f in s["lost"]:
            print(f"  {shown(f['path'])}: {f['reason']}")


def run(args) -> int:
    from video_retrieval.index.build import run_indexing
    from video_retrieval.index.config import IndexConfig
    from video_retrieval.index.repair import run_repair

    cfg = IndexConfig(
        model=args.model,
        pretrained=args.pretrained,
        backend=args.backend,
        checkpoint=args.checkpoint,
        random_weights=args.random_weights,
        fps=args.fps,
        num_frames=args.num_frames,
        batch_size=args.batch_size,
        precision=args.precision,
        patches=args.patches,
        workers=args.workers,
        devices=args.devices,
        prune=args.prune,
        shard_size=args.shard_size,
        ann=args.ann,
        target_recall=args.target_recall,
        max_memory=args.max_memory,
        recall_captions=args.recall_captions,
        recall_sample=args.recall_sample,
        num_nodes=args.num_nodes,
        store=args.store,
        milvus_uri=args.milvus_uri,
        milvus_collection=args.milvus_collection,
        milvus_token=args.milvus_token,
        wait=not args.no_wait,
        progress=False if (args.no_progress or args.json) else None,
    )
    if args.verify:
        from video_retrieval.index.verify import verify_index

        report = verify_index(args.index)
        if args.json:
            print(json.dumps(report, indent=1))
        else:
            print(f"index {report['index']}: all {report['checked']} files match their checksums")
            if report.get("collections"):
                print(f"its {report['collections']} Milvus collections hold its rows")
            if report["unrecorded"]:
                print(f"{len(report['unrecorded'])} shard(s) from an earlier vr have no checksums")
        return 0
    if args.repair:
        summary = run_repair(args.index, cfg)
        if args.json:
            json.dump(summary, sys.stdout, indent=1)
            print()
        else:
            _print_repair(summary)
        return 1 if summary["lost"] else 0  # something could not be recovered
    if not args.inputs:
        raise UserError("give the video files or folders to index (or --repair)")
    summary = run_indexing(args.inputs, args.index, cfg)
    if summary is None:  # a DDP rank > 0: rank 0 reports
        return 0
    if args.json:
        json.dump(summary, sys.stdout, indent=1)
        print()
    else:
        _print_summary(summary)
    return 0 if summary["videos"] > 0 else 1
