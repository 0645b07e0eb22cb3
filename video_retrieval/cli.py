"""The ``vr`` command: one entry point, one module per subcommand.

Each subcommand lives in ``video_retrieval/cli_<name>.py`` and exposes ``add_arguments(parser)``
and ``run(args) -> int``; ``vr train`` hands its arguments to LightningCLI untouched. Modules are
imported lazily so ``vr --help`` does not pay for torch.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from video_retrieval import __version__
from video_retrieval.errors import UserError

COMMANDS: dict[str, str] = {
    "train": "Train / validate / test a model with LightningCLI (--config configs/<recipe>.yaml)",
    "cache": "Encode a dataset once with a frozen CLIP into a feature cache",
    "index": "Index videos or folders into a searchable index directory",
    "search": "Search an index with a text query (two-stage: ANN + rerank)",
    "localize": "Find where a query happens inside one video",
    "eval": "Evaluate retrieval (index vs captions) or moments (predictions vs ground truth)",
    "synth": "Generate the synthetic video world (retrieval or moments)",
    "demo": "Offline end-to-end walk-through on the synthetic world",
}


def _module(name: str):
    return importlib.import_module(f"video_retrieval.cli_{name}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vr", description="Video-text retrieval and moment localization."
    )
    parser.add_argument("--version", action="version", version=f"vr {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, help_text in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if name == "train":
            continue  # LightningCLI parses its own arguments
        try:
            _module(name).add_arguments(p)
        except ModuleNotFoundError as exc:
            if exc.name != f"video_retrieval.cli_{name}":
                raise
            p.set_defaults(_unavailable=True)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if argv and argv[0] == "train":
            return _module("train").main(argv[1:]) or 0
        parser = build_parser()
        args = parser.parse_args(argv)
        if args.command is None:
            parser.print_help()
            return 0
        if getattr(args, "_unavailable", False):
            print(f"vr {args.command}: not yet available", file=sys.stderr)
            return 0
        return _module(args.command).run(args) or 0
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
