"""Reading the line-oriented text files users hand to the project (annotations, predictions,
captions, queries): every problem is one ``UserError`` naming the file and the line.

* bytes that are not UTF-8: ``FILE:LINE: not UTF-8 text (byte 0xff at column 1)``;
* a line that is not JSON (``json_line``): ``FILE:LINE: not valid JSON (...)``;
* numbers beyond a float: read as ``inf`` (so the usual "not finite" checks refuse them) instead
  of a Python integer that breaks arithmetic later.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

from video_retrieval.errors import UserError


def text_lines(path: str | Path, label: str | None = None) -> Iterator[tuple[int, str]]:
    """``(line number, line without its end of line)`` of a UTF-8 text file."""
    p = Path(path)
    label = label or str(path)
    with open(p, "rb") as f:
        for n, raw in enumerate(f, start=1):
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                bad = raw[exc.start : exc.start + 1].hex()
                raise UserError(
                    f"{label}:{n}: not UTF-8 text (byte 0x{bad} at column {exc.start + 1})"
                ) from None
            yield n, text.rstrip("\r\n")


def _number(text: str):
    """JSON integers of more digits than a float holds exactly become floats (``inf`` when out
    of range) rather than unbounded Python integers."""
    return int(text) if len(text.lstrip("-")) <= 15 else float(text)


def json_line(text: str, label: str, n: int):
    """The JSON value of one line of ``label`` (line number ``n``)."""
    try:
        return json.loads(text, parse_int=_number)
    except json.JSONDecodeError as exc:
        raise UserError(f"{label}:{n}: not valid JSON ({exc.msg})") from None
    except (ValueError, RecursionError) as exc:  # e.g. nesting too deep
        raise UserError(f"{label}:{n}: not valid JSON ({type(exc).__name__})") from None


def json_lines(path: str | Path, label: str | None = None) -> Iterator[tuple[int, object]]:
    """``(line number, JSON value)`` of every non-blank line of a JSON-lines file."""
    label = label or str(path)
    for n, text in text_lines(path, label):
        if text.strip():
            yield n, json_line(text, label, n)


def read_json_file(path: str | Path, label: str | None = None):
    """The JSON value of a whole file (UTF-8)."""
    label = label or str(path)
    raw = Path(path).read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise UserError(f"{label}:{line}: not UTF-8 text") from None
    try:
        return json.loads(text, parse_int=_number)
    except json.JSONDecodeError as exc:
        raise UserError(f"{label}: not valid JSON ({exc.msg}, line {exc.lineno})") from None
    except (ValueError, RecursionError) as exc:
        raise UserError(f"{label}: not valid JSON ({type(exc).__name__})") from None


def read_query_file(path, flag: str = "--queries") -> list[tuple[int, str]]:
    """(line number, query) of a queries file: one query per line, or ``captions.jsonl`` lines
    (a JSON object with a ``"caption"``, or ``"query"``, string). Blank lines are skipped; an
    invalid line is a ``UserError`` naming it."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"{flag}: no such file: {path}")
    out = []
    try:
        with open(p, encoding="utf-8") as f:
            for n, raw in enumerate(f, start=1):
                line = raw.strip()
                if not line:
                    continue
                if line.startswith("{"):
                    try:
                        obj = json.loads(line)
                    except json.JSONDecodeError as exc:
                        raise UserError(f"{path} line {n}: not valid JSON ({exc.msg})") from None
                    text = obj.get("caption", obj.get("query"))
                    if not isinstance(text, str):
                        raise UserError(f'{path} line {n}: no "caption" string')
                    line = text.strip()
                    if not line:
                        raise UserError(f"{path} line {n}: the caption is empty")
                out.append((n, line))
    except UnicodeDecodeError:
        raise UserError(f"{path}: not a UTF-8 text file") from None
    if not out:
        raise UserError(f"{path}: no queries (the file is empty)")
    return out
