"""The classes a checkpoint may name, and the names they had before the package split.

A Lightning checkpoint written by ``vr train`` records its LightningModule and DataModule as
dotted paths (``hyper_parameters._class_path``, ``datamodule_hyper_parameters._class_path``)
plus the function that instantiates them (``_instantiator``). LightningCLI and jsonargparse
import whatever such a path names, so a crafted file could make ``vr train --ckpt_path`` import
(and run the import-time code of) any installed module. Every checkpoint is therefore checked
here before anything it names is imported: only this project's own classes pass, old dotted
paths (the modules before the package was split into layers) are mapped to today's, and any
other ``class_path`` anywhere in the recorded hyper-parameters is refused.

Strings only: this module imports none of the classes it names (``models`` sits below
``train``).
"""

from __future__ import annotations

from video_retrieval.errors import UserError

#: today's classes that a checkpoint or a config may name
CLASS_PATHS = frozenset(
    {
        "video_retrieval.train.retrieval_module.RetrievalModule",
        "video_retrieval.train.retrieval_data.RetrievalDataModule",
        "video_retrieval.train.cache_data.CachedRetrievalDataModule",
        "video_retrieval.train.moment_module.MomentDETRModule",
        "video_retrieval.train.moment_data.MomentDataModule",
    }
)

#: dotted paths written by the code before the package split (2026-12-08) -> today's
OLD_CLASS_PATHS = {
    "video_retrieval.lit_retrieval.RetrievalModule": (
        "video_retrieval.train.retrieval_module.RetrievalModule"
    ),
    "video_retrieval.retrieval_data.RetrievalDataModule": (
        "video_retrieval.train.retrieval_data.RetrievalDataModule"
    ),
    "video_retrieval.feature_cache_data.CachedRetrievalDataModule": (
        "video_retrieval.train.cache_data.CachedRetrievalDataModule"
    ),
    "video_retrieval.lit_moments.MomentDETRModule": (
        "video_retrieval.train.moment_module.MomentDETRModule"
    ),
    "video_retrieval.lit_moments.MomentDataModule": (
        "video_retrieval.train.moment_data.MomentDataModule"
    ),
}

#: the instantiator LightningCLI records beside a class path
INSTANTIATORS = frozenset({"lightning.pytorch.cli.instantiate_module"})

_CLASS_KEYS = ("_class_path", "class_path")
_HPARAM_KEYS = ("hyper_parameters", "datamodule_hyper_parameters")


def current_class_path(path: str, source="a checkpoint") -> str:
    """Today's dotted path for ``path`` (an old one is mapped); anything else is refused."""
    if not isinstance(path, str):
        raise UserError(f"{source} names a class that is not a string: {path!r}")
    path = OLD_CLASS_PATHS.get(path, path)
    if path not in CLASS_PATHS:
        raise UserError(
            f"{source} names the class {path!r}, which is not one of this project's models or "
            "data modules; refusing to import it (a checkpoint never chooses code to run)"
        )
    return path


def _checked(value, source, where: str):
    """``value`` with every class path in it checked and mapped (a new object; nested dicts and
    lists are walked)."""
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            if key in _CLASS_KEYS:
                out[key] = current_class_path(item, source)
            elif key == "_instantiator":
                if item not in INSTANTIATORS:
                    raise UserError(
                        f"{source} names the instantiator {item!r} ({where}); refusing to "
                        "import it (a checkpoint never chooses code to run)"
                    )
                out[key] = item
            else:
                out[key] = _checked(item, source, f"{where}.{key}")
        return out
    if isinstance(value, (list, tuple)):
        return type(value)(_checked(v, source, where) for v in value)
    return value


def check_class_paths(ckpt: dict, source) -> dict:
    """``ckpt`` with its recorded hyper-parameters checked (``UserError`` naming ``source`` for
    a class or instantiator that is not ours) and old class paths mapped to today's."""
    if not isinstance(ckpt, dict):
        return ckpt
    out = dict(ckpt)
    for key in _HPARAM_KEYS:
        if key in out and out[key] is not None:
            if not isinstance(out[key], dict):
                raise UserError(f"{source}: {key} is not a mapping; not a vr train checkpoint")
            out[key] = _checked(out[key], source, key)
    return out
