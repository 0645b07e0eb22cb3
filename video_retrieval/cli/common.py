"""Arguments shared by several ``vr`` commands, and the parser that makes every usage error one
line."""

from __future__ import annotations

import argparse
import difflib

from video_retrieval.errors import UserError
from video_retrieval.limits import check


def add_model_arguments(parser, checkpoint_help: str) -> None:
    """The model flags shared by vr index / vr cache / vr localize (``models.weights``)."""
    parser.add_argument(
        "--model",
        default=None,
        help="open_clip model name (default ViT-B-32 with --pretrained laion2b_s34b_b79k)",
    )
    parser.add_argument(
        "--pretrained",
        default=None,
        metavar="TAG_OR_FILE",
        help="open_clip pretrained tag (downloads) or a local weights file "
        "(e.g. open_clip_pytorch_model.bin)",
    )
    parser.add_argument("--checkpoint", default=None, metavar="FILE", help=checkpoint_help)
    parser.add_argument(
        "--random-weights",
        action="store_true",
        help="random init (with --model, e.g. vr-tiny): for tests and benchmarks only, the "
        "results are meaningless",
    )


# -- one-line usage errors -----------------------------------------------------------------------
#: the command line being parsed (set by ``cli.main``): suggestions for a mistyped option
CURRENT_ARGV: list[str] = []


def _is_number(token: str) -> bool:
    try:
        float(token)
    except ValueError:
        return False
    return True


class VRArgumentParser(argparse.ArgumentParser):
    """argparse with one-line errors (``UserError``, printed by ``vr`` as every other error)
    that name a mistyped option and suggest the closest real one, and help that shows every
    default."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", DefaultsHelpFormatter)
        super().__init__(*args, **kwargs)
        self.register("action", "parsers", _Subcommands)

    def unknown_options(self) -> list[str]:
        """Options of the command line this parser does not know (for a parser with
        subcommands: those before its subcommand)."""
        choices = set()
        for action in self._actions:
            if isinstance(action, argparse._SubParsersAction):
                choices |= set(action.choices)
        known = self._option_string_actions
        out = []
        for token in CURRENT_ARGV:
            if token == "--" or (choices and token in choices and self.prog.split()[-1] != token):
                break
            name = token.split("=", 1)[0]
            if (
                token.startswith("-")
                and token != "-"
                and not _is_number(token)
                and name not in known
            ):
                out.append(name)
        return out

    def _chosen_subparser(self) -> VRArgumentParser | None:
        """The parser of the subcommand named on the command line, if this parser has them."""
        for action in self._actions:
            if isinstance(action, argparse._SubParsersAction):
                for token in CURRENT_ARGV:
                    if token in action.choices:
                        return action.choices[token]
        return None

    def error(self, message: str):
        sub = self._chosen_subparser()
        if sub is not None and message.startswith("unrecognized arguments"):
            sub.error(message)  # the subcommand's parser knows which option is wrong
        unknown = self.unknown_options()
        if unknown:
            bad = unknown[0]
            options = {o.lower(): o for o in self._option_string_actions}
            close = difflib.get_close_matches(bad.lower(), list(options), n=1, cutoff=0.6)
            hint = f" (did you mean {options[close[0]]}?)" if close else f"; see {self.prog} --help"
            raise UserError(f"{self.prog}: unknown option {bad}{hint}")
        raise UserError(f"{self.prog}: {message}; see {self.prog} --help")


class _Subcommands(argparse._SubParsersAction):
    """Subcommands whose own ``--help`` page starts with the line the parent's list shows."""

    def add_parser(self, name, **kwargs):
        if kwargs.get("help") and "description" not in kwargs:
            kwargs["description"] = kwargs["help"]
        return super().add_parser(name, **kwargs)


class DefaultsHelpFormatter(argparse.HelpFormatter):
    """Help lines end with the default where there is one (not for flags and ``None``, nor when
    the text already names it)."""

    def _get_help_string(self, action):
        text = action.help or ""
        default = action.default  # by identity: a default of 0 is shown, False (a flag) is not
        if (
            "%(default)" in text
            or default is None
            or default is False
            or default == argparse.SUPPRESS
        ):
            return text
        if "(default " in text or "default:" in text:
            return text
        if action.option_strings and action.nargs != 0:
            return f"{text} (default: %(default)s)"
        return text


def bounded(name: str):
    """An argparse ``type`` converting a flag's value and checking it against
    ``index.limits.BOUNDS[name]`` (the bounds ``vr serve`` and the Python API use too)."""

    def convert(text: str):
        try:
            return check(name, text)
        except UserError as exc:
            # "--workers must be in 0..256 (...), got -1" -> "must be in 0..256 (...), got -1"
            raise argparse.ArgumentTypeError("must " + str(exc).split(" must ", 1)[1]) from None

    convert.__name__ = name
    return convert


def ranged(lo: int, hi: int, what: str):
    """An argparse ``type``: a whole number in ``lo..hi`` (``what`` it counts, for the error)."""

    def convert(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be a whole number, got {text!r}") from None
        if not lo <= value <= hi:
            raise argparse.ArgumentTypeError(f"must be in {lo}..{hi} ({what}), got {value}")
        return value

    return convert


def shown(text: str) -> str:
    """A path or name as one printable line of text output: a byte that was not UTF-8 (kept by
    Python as a surrogate escape) as ``\\xNN``, and a newline, tab or other control character
    as its escape, so one result stays one line."""
    out = []
    for ch in str(text):
        if "\udc80" <= ch <= "\udcff":
            out.append(f"\\x{ord(ch) - 0xDC00:02x}")
        elif ch.isprintable():
            out.append(ch)
        else:
            out.append(ch.encode("unicode_escape").decode("ascii"))
    return "".join(out)


def shown_path(path) -> str:
    """A file's path for text output: relative to the working folder when it is inside it (what
    the user typed), else absolute; escaped as ``shown``. ``--json`` keeps absolute paths."""
    import os

    rel = os.path.relpath(os.fspath(path))
    return shown(os.fspath(path) if rel.startswith(".." + os.sep) or rel == ".." else rel)


def add_progress_flag(parser, *aliases: str) -> None:
    """``--no-progress``, the one spelling of every command (bars go to stderr, and only when it
    is a terminal)."""
    parser.add_argument("--no-progress", *aliases, dest="no_progress", action="store_true",
                        help="no progress bar on stderr")  # fmt: skip
