"""The ``vr`` command: one entry point, one module per subcommand.

Each subcommand lives in ``video_retrieval/cli/<name>.py`` and exposes ``add_arguments(parser)``
and ``run(args) -> int``; ``vr train`` hands its arguments to LightningCLI untouched. Modules are
imported lazily so ``vr --help`` does not pay for torch.

Errors: a user mistake (``UserError``) or an environment failure (``OSError``: disk full,
read-only folder, permission) prints one line on stderr and exits 2; anything else is a bug and
prints one line that says so. The traceback is shown only with ``--debug`` (before the command)
or ``VR_DEBUG=1``.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import os
import sys

from video_retrieval import __version__
from video_retrieval.cli import common
from video_retrieval.cli.common import VRArgumentParser
from video_retrieval.errors import UserError

COMMANDS: dict[str, str] = {
    "train": "Train / validate / test a model with LightningCLI (--config configs/<recipe>.yaml)",
    "cache": "Encode a dataset once with a frozen CLIP into a feature cache",
    "index": "Index videos or folders into a searchable index directory",
    "search": "Search an index with a text query (two-stage: ANN + rerank)",
    "localize": "Find where a query happens inside one video",
    "clip": "Cut a moment out of a video (an index id or a file) into an MP4",
    "eval": "Evaluate retrieval (index vs captions) or moments (predictions vs ground truth)",
    "data": "Check a dataset folder (MSR-VTT, DiDeMo, QVHighlights, Charades-STA) before training",
    "synth": "Generate the synthetic video world (retrieval or moments)",
    "demo": "Offline end-to-end walk-through on the synthetic world",
    "serve": "Serve an index over HTTP: JSON search/localize API and a web page",
    "model": "Slim a checkpoint down to what inference needs (slim, slim-moments)",
}

EXIT_USER_ERROR = 2
EXIT_BUG = 3


def _module(name: str):
    return importlib.import_module(f"video_retrieval.cli.{name}")


def build_parser() -> argparse.ArgumentParser:
    parser = VRArgumentParser(
        prog="vr",
        description="Video-text retrieval and moment localization.",
        epilog="Errors are one line; --debug (or VR_DEBUG=1) shows the Python traceback.",
    )
    parser.add_argument("--version", action="version", version=f"vr {__version__}")
    parser.add_argument(
        "--debug", action="store_true", help="show the Python traceback of an error (any position)"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, help_text in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if name == "train":
            continue  # LightningCLI parses its own arguments
        try:
            _module(name).add_arguments(p)
        except ModuleNotFoundError as exc:
            if exc.name != f"video_retrieval.cli.{name}":
                raise
            p.set_defaults(_unavailable=True)
    return parser


def split_debug(argv: list[str]) -> tuple[list[str], bool]:
    """``argv`` without any ``--debug`` flag, and whether tracebacks were asked for."""
    env = os.environ.get("VR_DEBUG", "").strip().lower() not in ("", "0", "false", "no")
    rest = [a for a in argv if a != "--debug"]
    return rest, env or len(rest) != len(argv)


def os_error_line(exc: OSError) -> str:
    """One line for an environment failure, naming the file and what to do."""
    where = f" ({exc.filename})" if getattr(exc, "filename", None) else ""
    hints = {
        errno.ENOSPC: "the disk is full: free space and run the same command again",
        errno.EDQUOT: "the disk quota is exceeded: free space and run the same command again",
        errno.EROFS: "the file system is read-only: choose a writable folder",
        errno.EACCES: "permission denied: choose a folder you can write to",
        errno.EPERM: "operation not permitted",
    }
    text = " ".join(str(exc).split())[:200]
    why = hints.get(exc.errno) or exc.strerror or text or type(exc).__name__
    return f"{why}{where}"


def _run(argv: list[str]) -> int:
    if argv and argv[0] == "train":
        return _module("train").main(argv[1:]) or 0
    parser = build_parser()
    common.CURRENT_ARGV = list(argv)
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return EXIT_USER_ERROR  # no command is a usage error, as for any other missing argument
    if getattr(args, "_unavailable", False):
        print(f"vr {args.command}: not yet available", file=sys.stderr)
        return EXIT_USER_ERROR
    return _module(args.command).run(args) or 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    argv, debug = split_debug(argv)
    try:
        return _run(argv)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader went away (vr search ... | head): not an error
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # no second error when Python flushes at exit
        return 141
    except SystemExit:
        raise
    except BaseException as exc:  # noqa: BLE001 - the one place that turns errors into lines
        if debug:
            raise
        if isinstance(exc, UserError):
            line = f"error: {exc}"
            code = EXIT_USER_ERROR
        elif isinstance(exc, OSError):
            line = f"error: {os_error_line(exc)}"
            code = EXIT_USER_ERROR
        elif isinstance(exc, MemoryError):
            line = "error: out of memory (try a smaller --batch-size)"
            code = EXIT_USER_ERROR
        else:
            text = " ".join(str(exc).split())[:300]
            line = (
                f"error: internal error ({type(exc).__name__}: {text}); "
                "rerun with --debug for the traceback and report it"
            )
            code = EXIT_BUG
        print(" ".join(line.split("\n")), file=sys.stderr)
        return code


if __name__ == "__main__":
    sys.exit(main())
