"""``vr train {fit,validate,test,predict} --config configs/<recipe>.yaml`` (LightningCLI).

Subclass mode for both the model and the data: a recipe names its classes with ``class_path``
(``video_retrieval.train.retrieval_module.RetrievalModule`` + ``video_retrieval.train.retrieval_data.
RetrievalDataModule`` for retrieval, ``video_retrieval.train.moment_module.MomentDETRModule`` +
``video_retrieval.train.moment_data.MomentDataModule`` for moments). ``--print_config``, ``--ckpt_path`` (resume) and config-typo
errors come from LightningCLI itself. The resolved config is saved next to the logs (overwritten
on re-runs).

User mistakes end in one line (``UserError``, printed by ``vr``): a ``--ckpt_path`` that is not
there, empty, or not a checkpoint file is refused before anything is built, and so is one whose
recorded classes are not this project's (``models.class_paths``: a checkpoint never chooses a
module to import; checkpoints written before the package split name old paths, which are
mapped to today's); a checkpoint of
another model ends in one line naming the file; data problems (missing annotation files, missing
videos) come from the data modules' ``setup``.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import warnings
import zipfile

from lightning.pytorch import LightningDataModule, LightningModule
from lightning.pytorch.cli import LightningCLI

from video_retrieval.errors import UserError


def _cpu_threads() -> None:
    """Honour ``VR_NUM_THREADS`` (e.g. 1 on a busy 2-core machine, where oversubscription makes
    every op slower)."""
    n = os.environ.get("VR_NUM_THREADS")
    if n:
        import torch

        torch.set_num_threads(int(n))


LIGHTNING_CKPT_WORDS = ("last", "best", "hpc", "registry", "null", "none")


def ckpt_path_arg(argv: list[str]) -> str | None:
    """The value of ``--ckpt_path`` (``--ckpt_path X`` or ``--ckpt_path=X``), last one wins."""
    value = None
    for i, a in enumerate(argv):
        if a == "--ckpt_path" and i + 1 < len(argv):
            value = argv[i + 1]
        elif a.startswith("--ckpt_path="):
            value = a.split("=", 1)[1]
    return value


def check_ckpt_path(value: str | None) -> None:
    """One-line refusal of a ``--ckpt_path`` that cannot be a checkpoint (Lightning's own words
    ``last`` / ``best`` / ``hpc`` / ``registry...`` pass through)."""
    if value is None or value.lower() in LIGHTNING_CKPT_WORDS or value.startswith("registry:"):
        return
    if not os.path.exists(value):
        raise UserError(f"--ckpt_path {value}: no such file")
    if os.path.isdir(value):
        raise UserError(f"--ckpt_path {value}: is a folder; give the .ckpt file inside it")
    if os.path.getsize(value) == 0:
        raise UserError(f"--ckpt_path {value}: empty file, not a checkpoint")
    if not zipfile.is_zipfile(value):
        raise UserError(
            f"--ckpt_path {value}: not a checkpoint written by vr train (a PyTorch zip file); "
            f"truncated or another kind of file?"
        )
    from video_retrieval.models.checkpoints import read_checkpoint

    read_checkpoint(value, label=f"--ckpt_path {value}", mmap=True)  # refuses foreign classes


def _user_error_in(exc: BaseException) -> UserError | None:
    """The ``UserError`` that ``exc`` was raised from (its ``__cause__`` / ``__context__``)."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, UserError):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


def _is_checkpoint_mismatch(exc: BaseException) -> bool:
    text = str(exc)
    return isinstance(exc, (RuntimeError, KeyError)) and (
        "state_dict" in text or "Missing key" in text or "Unexpected key" in text
    )


def main(argv: list[str] | None = None) -> int:
    ckpt = ckpt_path_arg(list(argv or []))
    check_ckpt_path(ckpt)
    try:
        return _main(argv)
    except UserError:
        raise
    except Exception as exc:
        cause = _user_error_in(exc)
        if cause is not None:  # jsonargparse wraps errors raised while building the classes
            raise cause from None
        if ckpt is not None and _is_checkpoint_mismatch(exc):
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise UserError(
                f"--ckpt_path {ckpt}: does not fit this config's model ({first[:200]})"
            ) from exc
        raise


def _as_dict(value):
    return value.as_dict() if hasattr(value, "as_dict") else value


def config_conflicts(asked: dict, stored: dict, inferred=()) -> list[str]:
    """Model settings the user's config gives otherwise than the checkpoint's run: each key of
    ``asked`` whose value differs from ``stored`` (dicts: only the keys the config sets, since
    a module may record more, e.g. the temporal blocks' activation; ``None`` is no choice, and
    so is 0 for the ``inferred`` keys, which the module fills in from the data)."""

    def norm(x):  # tuples and lists, as YAML and the checkpoint hold them
        return json.loads(json.dumps(x, default=str))

    out = []
    for key, want in asked.items():
        if key.startswith("_") or key not in stored or want is None:
            continue  # None: the config leaves it to the module's default
        if key in inferred and want == 0:
            continue
        want, have = norm(want), norm(stored[key])
        if isinstance(want, dict) and isinstance(have, dict):
            if any(have.get(k) != v for k, v in want.items()):
                out.append(key)
        elif want != have:
            out.append(key)
    return out


def _module_class_attr(path: str, attr: str, default):
    """``attr`` of the class a (checked) dotted path names, or ``default``."""
    import importlib

    mod, _, name = str(path or "").rpartition(".")
    try:
        cls = getattr(importlib.import_module(mod), name) if mod else None
    except (ImportError, AttributeError):
        return default
    return getattr(cls, attr, default)


def _inferred_hparams(model) -> tuple:
    """``INFERRED_HPARAMS`` of the config's module class (keys where 0 means "from the data")."""
    return tuple(_module_class_attr(getattr(model, "class_path", ""), "INFERRED_HPARAMS", ()))


class VRLightningCLI(LightningCLI):
    """LightningCLI that refuses a resume whose config asks for another model than the
    checkpoint's run: Lightning would silently train the checkpoint's model (it overwrites the
    config's model arguments with the checkpoint's hyper-parameters)."""

    def _parse_ckpt_path(self) -> None:
        """LightningCLI's own step (the checkpoint's model hyper-parameters override the
        config's), reading the checkpoint through ``read_checkpoint``: its class paths are
        checked against the allow-list and old ones mapped before jsonargparse imports them."""
        sub = self.config.get("subcommand") if hasattr(self, "config") else None
        ckpt = self.config[sub].get("ckpt_path") if sub else None
        if not ckpt or not os.path.isfile(ckpt):
            return
        from video_retrieval.models.checkpoints import read_checkpoint

        model = self.config[sub].get("model")
        asked = _as_dict(getattr(model, "init_args", None) or {}) if model is not None else {}
        stored = read_checkpoint(ckpt, label=f"--ckpt_path {ckpt}", mmap=True)
        stored = dict(stored.get("hyper_parameters") or {})
        hparams = {k: v for k, v in stored.items() if k != "_instantiator"}
        if "_class_path" in hparams:  # what it was trained with where it predates a setting
            hparams = {**_module_class_attr(hparams["_class_path"], "CHECKPOINT_DEFAULTS", {}),
                       **hparams}  # fmt: skip
        if hparams:
            if "_class_path" in hparams:
                kwargs = {k: v for k, v in hparams.items() if k != "_class_path"}
                hparams = {"class_path": hparams["_class_path"], "dict_kwargs": kwargs}
            try:
                self.config = self.parser.parse_object({sub: {"model": hparams}}, self.config)
            except SystemExit:
                sys.stderr.write("Parsing of ckpt_path hyperparameters failed!\n")
                raise
        if not asked:
            return
        diff = config_conflicts(asked, stored, _inferred_hparams(model))
        if diff:
            shown = ", ".join(f"{k}={stored[k]!r} (config: {asked[k]!r})" for k in diff[:3])
            raise UserError(
                f"--ckpt_path {ckpt} continues a run with other model settings: {shown}; resume "
                "with the config it was trained with, or start a new run from its weights "
                "(retrieval: --model.init_args.init_from)"
            )


def _main(argv: list[str] | None = None) -> int:
    _cpu_threads()
    # ``vr train`` passes its own argv slice; LightningCLI would warn that sys.argv differs.
    warnings.filterwarnings("ignore", message="LightningCLI's args parameter")
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")
    # the seed is in the saved config; Lightning's "Seed set to N" line is noise beside errors
    logging.getLogger("lightning.fabric.utilities.seed").setLevel(logging.WARNING)
    _quiet_lightning()
    argv = list(sys.argv[1:] if argv is None else argv)
    sub = argv[0] if argv else None
    if sub in ("test", "validate") and not any(a.startswith("--verbose") for a in argv):
        argv += ["--verbose", "false"]  # its table repeats every metric per dataloader: ours below
    cli = VRLightningCLI(
        LightningModule,
        LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        args=argv,
        save_config_kwargs={"overwrite": True},
        auto_configure_optimizers=False,
    )
    if sub == "fit":
        print_checkpoints(cli.trainer)
    elif sub in ("test", "validate"):
        print_metrics(cli.trainer, sub)
    return 0


class _NoTips(logging.Filter):
    """Lightning's advertisements for its cloud products ("Tip: ... litlogger / litmodels")."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Tip:" not in str(record.msg)


def _quiet_lightning() -> None:
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        logging.getLogger(name).addFilter(_NoTips())
    # the CSV logger is the chosen default here, not a missing TensorBoard
    warnings.filterwarnings("ignore", message=r"Starting from v1\.9\.0, `tensorboardX`")


def print_checkpoints(trainer) -> None:
    """Where the run's checkpoints are: the last one (to resume) and the best by the monitored
    metric (the one to evaluate and ship)."""
    if not trainer.is_global_zero:
        return
    ck = getattr(trainer, "checkpoint_callback", None)
    if ck is None:
        return
    last = ck.last_model_path or ""
    best = ck.best_model_path or ""
    if last:
        print(f"last checkpoint: {last}")
    if best and best != last:
        score = ck.best_model_score
        value = f", {ck.monitor} {float(score):.4g}" if score is not None and ck.monitor else ""
        print(f"best checkpoint: {best}{value}")
    elif best:
        print(f"checkpoint: {best}")


def print_metrics(trainer, stage: str) -> None:
    """The metrics of ``vr train test|validate``, each once, rounded, sorted by name (Lightning's
    own table repeats them per dataloader, unrounded)."""
    if not trainer.is_global_zero:
        return
    metrics = {}
    for name, value in trainer.callback_metrics.items():
        base = name.split("/dataloader_idx_")[0]
        metrics.setdefault(base, float(value))
    if not metrics:
        return
    width = max(len(n) for n in metrics)
    print(f"{stage} metrics:")
    for name in sorted(metrics):
        print(f"  {name:<{width}}  {metrics[name]:.2f}")


if __name__ == "__main__":
    import sys

    sys.exit(main())
