"""Train every aggregator (vr-tiny from scratch) on the synthetic world and print a results table.

    python benchmarks/synth_training.py --world data/synth_bench --epochs 10 \
        [--aggregators mean,seq_transformer] [--max-minutes 10] [--json results.json]

Generates the world (lossless H.264, so that time-reversed pairs decode to exactly reversed frames)
if ``--world`` does not exist, then for each aggregator runs ``configs/synth_<agg>.yaml`` through
LightningCLI (the same path as ``vr train fit``) in a child process, followed by ``test`` on the
synthetic test split and the compositional split. Reported: t2v/v2t R@1 (+ DSL, + Sinkhorn for
UCoFiA), temporal-pair accuracy (all / direction / order pairs), compositional t2v R@1, train time.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

AGGS = ["mean", "query_scored", "seq_lstm", "seq_transformer", "tight_transformer", "ucofia"]
REPO = Path(__file__).resolve().parents[1]


def run_one(args) -> dict:
    import torch
    from lightning.pytorch import LightningDataModule, LightningModule
    from lightning.pytorch.cli import LightningCLI

    torch.set_num_threads(args.threads)
    argv = [
        "--config",
        str(REPO / "configs" / f"synth_{args.one}.yaml"),
        f"--data.root={args.world}",
        f"--data.frame_cache_dir={Path(args.world) / '.frame_cache'}",
        f"--data.global_batch_size={args.batch}",
        f"--trainer.max_epochs={args.epochs}",
        f"--trainer.default_root_dir={args.runs}/{args.one}",
        "--trainer.check_val_every_n_epoch=1000",
        "--trainer.enable_progress_bar=false",
        f"--seed_everything={args.seed}",
    ]
    if args.max_minutes:
        argv.append(f"--trainer.max_time=00:00:{int(args.max_minutes):02d}:00")
    cli = LightningCLI(
        LightningModule,
        LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        args=argv,
        run=False,
        save_config_kwargs={"overwrite": True},
    )
    t0 = time.perf_counter()
    cli.trainer.fit(cli.model, cli.datamodule)
    train_s = time.perf_counter() - t0
    t1 = time.perf_counter()
    cli.trainer.test(cli.model, cli.datamodule, verbose=False)
    test_s = time.perf_counter() - t1
    res = dict(cli.model.eval_results)
    return {
        "aggregator": args.one,
        "epochs_done": cli.trainer.current_epoch,
        "steps": cli.trainer.global_step,
        "train_s": round(train_s, 1),
        "test_s": round(test_s, 1),
        "final_loss": float(cli.trainer.callback_metrics.get("train/loss", float("nan"))),
        "results": res,
    }


def table(rows: list[dict]) -> str:
    cols = [
        ("aggregator", lambda r: r["aggregator"]),
        ("steps", lambda r: str(r["steps"])),
        ("train min", lambda r: f"{r['train_s'] / 60:.1f}"),
        ("t2v R@1", lambda r: _g(r, "test/", "t2v_R1")),
        ("t2v R@5", lambda r: _g(r, "test/", "t2v_R5")),
        ("t2v MdR", lambda r: _g(r, "test/", "t2v_MdR")),
        ("v2t R@1", lambda r: _g(r, "test/", "v2t_R1")),
        ("DSL t2v R@1*", lambda r: _g(r, "test/", "dsl_t2v_R1")),
        ("SK t2v R@1", lambda r: _g(r, "test/", "sk_t2v_R1")),
        ("SK v2t R@1", lambda r: _g(r, "test/", "sk_v2t_R1")),
        ("pair acc", lambda r: _g(r, "test/", "temporal_pair_acc", 3)),
        ("dir", lambda r: _g(r, "test/", "temporal_pair_acc_direction", 3)),
        ("order", lambda r: _g(r, "test/", "temporal_pair_acc_order", 3)),
        ("comp t2v R@1", lambda r: _g(r, "test_compositional/", "t2v_R1")),
    ]
    lines = ["| " + " | ".join(c for c, _ in cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        lines.append("| " + " | ".join(f(r) for _, f in cols) + " |")
    return "\n".join(lines) + "\n(* DSL is transductive: it normalises over all test queries.)"


def _g(r, prefix, key, digits=1):
    v = r.get("results", {}).get(prefix, {}).get(key)
    return "-" if v is None else f"{v:.{digits}f}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--world", default="data/synth_bench")
    ap.add_argument("--world-seed", type=int, default=0)
    ap.add_argument("--num-train", type=int, default=400)
    ap.add_argument("--num-test", type=int, default=100)
    ap.add_argument("--num-compositional", type=int, default=50)
    ap.add_argument("--aggregators", default=",".join(AGGS))
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--max-minutes", type=int, default=0, help="per-aggregator training cap")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=int(os.environ.get("VR_NUM_THREADS", "1")))
    ap.add_argument("--runs", default="runs/synth_bench")
    ap.add_argument("--json", default=None)
    ap.add_argument("--one", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--out", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.one:
        row = run_one(args)
        Path(args.out).write_text(json.dumps(row))
        return 0

    world = Path(args.world)
    if not (world / "train.csv").is_file():
        from video_retrieval.datasets.synth_retrieval import generate_retrieval

        summary = generate_retrieval(
            world,
            seed=args.world_seed,
            codec="h264_lossless",
            num_train=args.num_train,
            num_test=args.num_test,
            num_compositional=args.num_compositional,
        )
        print("world:", json.dumps(summary), flush=True)
    rows = []
    for agg in args.aggregators.split(","):
        out = Path(args.runs) / f"{agg}.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, __file__, "--one", agg, "--out", str(out)]
        for k in ("world", "epochs", "batch", "max_minutes", "seed", "threads", "runs"):
            cmd += [f"--{k.replace('_', '-')}", str(getattr(args, k))]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            print(f"{agg}: failed\n{proc.stderr[-3000:]}", flush=True)
            continue
        row = json.loads(out.read_text())
        row["wall_s"] = round(time.perf_counter() - t0, 1)
        rows.append(row)
        print(json.dumps(row), flush=True)
        print(table(rows), flush=True)
    print(
        f"\nconfig: world={args.world} (seed {args.world_seed}, {args.num_train}/{args.num_test}/"
        f"{args.num_compositional} videos), epochs={args.epochs}, batch={args.batch}, "
        f"seed={args.seed}, threads={args.threads}"
    )
    print(table(rows))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
