"""``vr train {fit,validate,test,predict} --config configs/<recipe>.yaml`` (LightningCLI).

Subclass mode for both the model and the data: a recipe names its classes with ``class_path``
(``video_retrieval.lit_retrieval.RetrievalModule`` + ``video_retrieval.retrieval_data.
RetrievalDataModule`` for retrieval, ``video_retrieval.lit_moments.MomentDETRModule`` +
``MomentDataModule`` for moments). ``--print_config``, ``--ckpt_path`` (resume) and config-typo
errors come from LightningCLI itself. The resolved config is saved next to the logs (overwritten
on re-runs).
"""

from __future__ import annotations

import os
import warnings

from lightning.pytorch import LightningDataModule, LightningModule
from lightning.pytorch.cli import LightningCLI


def _cpu_threads() -> None:
    """Honour ``VR_NUM_THREADS`` (e.g. 1 on a busy 2-core machine, where oversubscription makes
    every op slower)."""
    n = os.environ.get("VR_NUM_THREADS")
    if n:
        import torch

        torch.set_num_threads(int(n))


def main(argv: list[str] | None = None) -> int:
    _cpu_threads()
    # ``vr train`` passes its own argv slice; LightningCLI would warn that sys.argv differs.
    warnings.filterwarnings("ignore", message="LightningCLI's args parameter")
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")
    LightningCLI(
        LightningModule,
        LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        args=argv,
        save_config_kwargs={"overwrite": True},
        auto_configure_optimizers=False,
    )
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(main())
