"""``vr data check DATASET ROOT``: check a dataset folder before training (``datasets.check``).

Prints, per split file, the annotation and video counts against the published split sizes, the
missing / empty / undecodable videos (decoded in parallel with the project's decoder, progress bar
on stderr), duplicate ids, then the command that trains on the folder. ``--json`` prints the
report as JSON instead. Exit status 0 when nothing is wrong, 1 when something is (the report says
what), 2 for a usage error.
"""

from __future__ import annotations

import json
import sys

from video_retrieval.errors import UserError


def add_arguments(parser) -> None:
    sub = parser.add_subparsers(dest="what", metavar="{check}")
    c = sub.add_parser(
        "check", help="counts, missing / undecodable videos and duplicate ids of a dataset folder"
    )
    c.add_argument("dataset", choices=["msrvtt", "didemo", "qvhighlights", "charades"])
    c.add_argument("root", metavar="ROOT", help="the dataset folder (the recipes' data root)")
    c.add_argument("--video-dir", default=None, help="videos folder (default ROOT/videos)")
    c.add_argument(
        "--no-decode", action="store_true", help="only check that the files exist (no decoding)"
    )
    c.add_argument(
        "--workers", type=int, default=None, help="decoding threads (default: min(8, CPUs))"
    )
    c.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    c.add_argument("--json", action="store_true", help="the report as JSON")


def _line(rep: dict) -> str:
    if not rep["found"]:
        return f"{rep['file']}: not found"
    if rep.get("error"):
        return f"{rep['file']}: {rep['error']}"
    parts = [
        f"{rep['annotations']:,} annotations (published {rep['published_annotations']:,})",
        f"{rep['videos']:,} videos (published {rep['published_videos']:,})",
    ]
    checks = [
        f"{rep.get('videos_found', 0):,} found",
        f"{rep.get('missing_count', 0):,} missing",
        f"{rep.get('undecodable_count', 0):,} undecodable",
        f"{rep.get('duplicate_count', 0):,} duplicate ids",
    ]
    return f"{rep['file']}: {', '.join(parts)}; {', '.join(checks)}"


def print_report(rep: dict, out=None) -> None:
    out = out if out is not None else sys.stdout
    print(f"{rep['dataset']} at {rep['root']} (videos: {rep['video_dir']})", file=out)
    for sp in rep["splits"]:
        print("  " + _line(sp), file=out)
        if sp.get("missing"):
            more = sp["missing_count"] - len(sp["missing"])
            tail = f" (+{more} more)" if more > 0 else ""
            print(f"    missing: {', '.join(map(str, sp['missing'][:5]))}{tail}", file=out)
        for u in sp.get("undecodable", [])[:5]:
            print(f"    undecodable: {u['path']} ({u['reason']})", file=out)
        if sp.get("duplicate_ids"):
            print(f"    duplicate ids: {sp['duplicate_ids'][:5]}", file=out)
        for f, names in (sp.get("shared_files") or {}).items():
            print(f"    one file for several videos: {' and '.join(names)} -> {f}", file=out)
        if sp.get("without_captions_count"):
            print(
                f"    {sp['without_captions_count']} listed video(s) without captions "
                f"(first: {sp['without_captions'][0]})",
                file=out,
            )
        if sp.get("missing_features_count"):
            print(
                f"    {sp['missing_features_count']} feature file(s) missing "
                f"(first: {sp['missing_features'][0]})",
                file=out,
            )
    for n in rep["notes"]:
        print(f"  note: {n}", file=out)
    if not rep["ok"]:  # no command to run next: a training run on this folder would fail or mislead
        print("PROBLEMS FOUND (see above): fix them and run this check again (vr train refuses "
              "missing or empty videos unless --data.init_args.allow_missing true)", file=out)  # fmt: skip
        return
    print("OK", file=out)
    print("next:", file=out)
    for cmd in rep["next"]:
        print(f"  {cmd}", file=out)


def run(args) -> int:
    if args.what != "check":
        raise UserError("say what to do: vr data check DATASET ROOT")
    from video_retrieval.datasets.check import check_dataset

    rep = check_dataset(
        args.dataset,
        args.root,
        video_dir=args.video_dir,
        decode=not args.no_decode,
        workers=args.workers,
        progress=not args.no_progress,
    )
    if args.json:
        print(json.dumps(rep, indent=1, allow_nan=False))
    else:
        print_report(rep)
    return 0 if rep["ok"] else 1
