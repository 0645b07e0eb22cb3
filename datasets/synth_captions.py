"""Paraphrase templates for captions and moment queries of the synthetic world.

Every template keeps the facts: colour word (one word per colour), a shape word (a synonym of the
rendered shape), the size word when it says one, each event verb (a synonym of the rendered event)
and, for two events, their order. ``VOCAB`` maps every word family to its meaning so tests (and
anyone) can check a caption against the ground truth with :func:`parse_caption`.
"""

from __future__ import annotations

import re

import numpy as np

SHAPE_WORDS: dict[str, tuple[str, ...]] = {
    "circle": ("circle", "disc", "ball"),
    "square": ("square", "box", "block"),
    "triangle": ("triangle",),
    "star": ("star",),
    "cross": ("cross", "plus sign"),
    "diamond": ("diamond", "rhombus"),
}
SIZE_WORDS: dict[str, tuple[str, ...]] = {
    "small": ("small", "little", "tiny"),
    "big": ("big", "large"),
}
# Verb phrases in third person present ("the red circle ___").
EVENT_WORDS: dict[str, tuple[str, ...]] = {
    "move_left": (
        "moves to the left",
        "slides left",
        "travels leftwards",
        "goes left",
        "moves left",
    ),
    "move_right": (
        "moves to the right",
        "slides right",
        "travels rightwards",
        "goes right",
        "moves right",
    ),
    "move_up": ("moves up", "rises", "slides upwards", "goes up", "travels upwards"),
    "move_down": ("moves down", "sinks", "slides downwards", "goes down", "travels downwards"),
    "grow": ("grows", "gets bigger", "expands", "becomes larger", "grows in size"),
    "shrink": ("shrinks", "gets smaller", "contracts", "becomes smaller", "shrinks in size"),
    "appear": ("appears", "fades in", "shows up", "comes into view"),
    "disappear": ("disappears", "fades out", "vanishes", "fades away"),
}
BACKGROUND_WORDS: dict[str, tuple[str, ...]] = {
    "plain": ("plain", "dark"),
    "noise": ("noisy", "grainy"),
    "stripes": ("striped",),
}


def noun_phrase(rng: np.random.Generator, obj: dict, article: str, size_p: float = 0.6) -> str:
    words = []
    if rng.random() < size_p:
        words.append(_pick(rng, SIZE_WORDS[obj["size"]]))
    words.append(obj["colour"])
    words.append(_pick(rng, SHAPE_WORDS[obj["shape"]]))
    art = article
    if article == "a":
        art = "an" if words[0][0] in "aeiou" else "a"
    return f"{art} {' '.join(words)}"


def _pick(rng: np.random.Generator, options) -> str:
    return options[int(rng.integers(len(options)))]


def _bg_suffix(rng: np.random.Generator, bg_kind: str, p: float) -> str:
    if rng.random() >= p:
        return ""
    return f" on a {_pick(rng, BACKGROUND_WORDS[bg_kind])} background"


def single_caption(rng: np.random.Generator, obj: dict, event: str, bg_kind: str) -> str:
    art = "a" if rng.random() < 0.5 else "the"
    np_ = noun_phrase(rng, obj, art)
    vp = _pick(rng, EVENT_WORDS[event])
    tpl = int(rng.integers(4))
    bg = _bg_suffix(rng, bg_kind, 0.25)
    if tpl == 0:
        return f"{np_} {vp}{bg}"
    if tpl == 1:
        return f"in this clip {np_} {vp}{bg}"
    if tpl == 2:
        return f"we see {noun_phrase(rng, obj, 'a')} that {vp}{bg}"
    return f"there is {noun_phrase(rng, obj, 'a')} that {vp}{bg}"


def same_object_caption(
    rng: np.random.Generator, obj: dict, events: list[str], bg_kind: str
) -> str:
    art = "a" if rng.random() < 0.5 else "the"
    np_ = noun_phrase(rng, obj, art)
    v1 = _pick(rng, EVENT_WORDS[events[0]])
    v2 = _pick(rng, EVENT_WORDS[events[1]])
    bg = _bg_suffix(rng, bg_kind, 0.2)
    tpl = int(rng.integers(4))
    if tpl == 0:
        return f"{np_} {v1} and then {v2}{bg}"
    if tpl == 1:
        return f"{np_} {v1}, then {v2}{bg}"
    if tpl == 2:
        return f"{np_} first {v1} and afterwards {v2}{bg}"
    return f"we see {noun_phrase(rng, obj, 'a')} that {v1} and then {v2}{bg}"


def two_object_caption(
    rng: np.random.Generator, objs: list[dict], events: list[str], bg_kind: str
) -> str:
    n1 = noun_phrase(rng, objs[0], "a" if rng.random() < 0.5 else "the")
    n2 = noun_phrase(rng, objs[1], "a" if rng.random() < 0.5 else "the")
    v1 = _pick(rng, EVENT_WORDS[events[0]])
    v2 = _pick(rng, EVENT_WORDS[events[1]])
    bg = _bg_suffix(rng, bg_kind, 0.2)
    tpl = int(rng.integers(4))
    if tpl == 0:
        return f"{n1} {v1}, then {n2} {v2}{bg}"
    if tpl == 1:
        return f"first {n1} {v1} and then {n2} {v2}{bg}"
    if tpl == 2:
        return f"{n1} {v1} before {n2} {v2}{bg}"
    return f"after {n1} {v1}, {n2} {v2}{bg}"


def make_captions(rng: np.random.Generator, spec: dict, n: int) -> list[str]:
    """``n`` distinct captions (as far as the templates allow) describing ``spec['events']``."""
    objs = spec["objects"]
    evs = spec["events"]
    bg_kind = spec["background"]["kind"]
    out: list[str] = []
    seen: set[str] = set()
    for _ in range(n * 8):
        if len(out) >= n:
            break
        if len(evs) == 1:
            cap = single_caption(rng, objs[evs[0]["object"]], evs[0]["event"], bg_kind)
        elif evs[0]["object"] == evs[1]["object"]:
            cap = same_object_caption(
                rng, objs[evs[0]["object"]], [e["event"] for e in evs], bg_kind
            )
        else:
            cap = two_object_caption(
                rng, [objs[e["object"]] for e in evs], [e["event"] for e in evs], bg_kind
            )
        if cap not in seen:
            seen.add(cap)
            out.append(cap)
    return out


def query_text(rng: np.random.Generator, obj: dict, event: str, size_p: float = 0.3) -> str:
    """A moment query for one event ("the green star moves up")."""
    np_ = noun_phrase(rng, obj, "the" if rng.random() < 0.7 else "a", size_p=size_p)
    vp = _pick(rng, EVENT_WORDS[event])
    if rng.random() < 0.2:
        return f"when {np_} {vp}"
    return f"{np_} {vp}"


# ---------------------------------------------------------------------------------------------
# Parsing (for checks): facts a caption states, in order.


def _alternation(words) -> str:
    return "|".join(sorted((re.escape(w) for w in words), key=len, reverse=True))


def parse_caption(caption: str) -> dict:
    """Colours, shapes, sizes, events (in the order written) and background a caption states."""
    from video_retrieval.datasets.synth_render import COLOURS

    text = f" {caption.lower()} "
    colour_re = re.compile(rf"\b({_alternation(COLOURS)})\b")
    shape_map = {w: s for s, ws in SHAPE_WORDS.items() for w in ws}
    shape_re = re.compile(rf"\b({_alternation(shape_map)})\b")
    size_map = {w: s for s, ws in SIZE_WORDS.items() for w in ws}
    size_re = re.compile(rf"\b({_alternation(size_map)})\s+(?={_alternation(COLOURS)})")
    ev_map = {w: e for e, ws in EVENT_WORDS.items() for w in ws}
    ev_re = re.compile(rf"\b({_alternation(ev_map)})\b")
    bg_map = {w: b for b, ws in BACKGROUND_WORDS.items() for w in ws}
    bg_re = re.compile(rf"\bon an? ({_alternation(bg_map)}) background")
    bg = bg_re.search(text)
    body = bg_re.sub(" ", text)
    return {
        "colours": colour_re.findall(body),
        "shapes": [shape_map[w] for w in shape_re.findall(body)],
        "sizes": [size_map[w] for w in size_re.findall(body)],
        "events": [ev_map[w] for w in ev_re.findall(body)],
        "background": bg_map[bg.group(1)] if bg else None,
    }
