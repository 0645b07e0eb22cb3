"""``vr index`` across processes and machines: Lightning DDP ``trainer.predict``.

Roles. Global rank 0 is the *planner*: it holds the index's writer lock (``IndexLock``), reads
the journal, decides what to encode (the plan), encodes its share, waits for every rank's
shards, and finalizes (videos/pooled/ANN + manifest) once. Every other rank is a *worker*: it
never takes the lock, receives the plan from rank 0 over the process group (a broadcast in the
``LightningDataModule.setup`` hook, so no plan file can be stale), loads the model the plan
names, encodes its share of the videos (``UnrepeatedDistributedSampler``), writes its own shards
``shards/<run>-<rank>-<seq>`` and its own journal ``journal/<run>-<rank>.jsonl``, and exits.

Launches (``launch_rank``):

* one machine, ``--devices M``: Lightning relaunches the command for local ranks 1..M-1 (they see
  ``WORKER_ENV``, set by the launching process, with the world size it chose);
* several machines, ``--num-nodes N --devices M``: the same command runs on every node, with
  ``MASTER_ADDR``/``MASTER_PORT`` (rank 0's node) and ``NODE_RANK`` set (Lightning's own
  launcher then starts M processes per node), or under ``torchrun`` (``RANK``, ...) or SLURM
  ``srun`` (``SLURM_PROCID``, ...), which start every process themselves.

Shared filesystem: the index folder, the videos (same absolute paths) and any checkpoint must be
visible to every node. Rank 0 waits until every rank's journal lines are visible before it
finalizes, and says so in one line when they do not appear (a folder that is not shared).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from video_retrieval.errors import UserError

#: set by a launching process for the processes Lightning relaunches: {"devices", "num_nodes"}
WORKER_ENV = "VR_INDEX_DDP"
#: seconds rank 0 waits for other ranks' journal lines to become visible (shared filesystem)
VISIBILITY_TIMEOUT_S = 120.0


def _cluster_environment():
    """The cluster environment Lightning would pick (torchrun, SLURM, LSF, MPI), or None."""
    from lightning.fabric.plugins.environments import (
        LSFEnvironment,
        MPIEnvironment,
        SLURMEnvironment,
        TorchElasticEnvironment,
    )

    for env_type in (TorchElasticEnvironment, SLURMEnvironment, LSFEnvironment, MPIEnvironment):
        try:
            if env_type.detect():
                return env_type()
        except Exception:  # a half-configured environment (e.g. MPI without mpi4py)
            continue
    return None


def distributed(cfg) -> bool:
    return cfg.num_nodes > 1 or cfg.devices > 1


def relaunched_world() -> dict | None:
    """The world size of a process Lightning relaunched for a local rank > 0 (else None)."""
    spec = os.environ.get(WORKER_ENV)
    if spec and os.environ.get("LOCAL_RANK", "0") != "0":
        return json.loads(spec)
    return None


def launch_rank(cfg) -> int:
    """Global rank of this process in the launch of ``cfg`` (0: the planner)."""
    if relaunched_world() is not None:
        return int(os.environ.get("NODE_RANK", "0")) * cfg.devices + int(os.environ["LOCAL_RANK"])
    if not distributed(cfg):
        return 0
    env = _cluster_environment()
    if env is not None:
        return int(env.global_rank())
    return int(os.environ.get("NODE_RANK", "0")) * cfg.devices


def externally_launched(cfg) -> bool:
    """True when the world size is fixed outside this process (several nodes, torchrun, srun):
    rank 0 must then start DDP even with fewer videos than processes."""
    return cfg.num_nodes > 1 or (cfg.devices > 1 and _cluster_environment() is not None)


def check_launch(cfg) -> None:
    """One-line errors for a launch that cannot work."""
    if cfg.devices < 1:
        raise UserError(f"--devices must be >= 1, got {cfg.devices}")
    if cfg.num_nodes < 1:
        raise UserError(f"--num-nodes must be >= 1, got {cfg.num_nodes}")
    if relaunched_world() is not None or not distributed(cfg):
        return
    env = _cluster_environment()
    world = cfg.num_nodes * cfg.devices
    if env is not None:
        if int(env.world_size()) != world:
            raise UserError(
                f"the launcher started {env.world_size()} processes but --num-nodes "
                f"{cfg.num_nodes} x --devices {cfg.devices} = {world}: make them agree"
            )
        return
    if cfg.num_nodes > 1:
        missing = [v for v in ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK") if not os.environ.get(v)]
        if missing:
            raise UserError(
                f"--num-nodes {cfg.num_nodes}: set {', '.join(missing)} on every node (rank 0's "
                "address and a free port; NODE_RANK 0..N-1), or launch with torchrun or srun"
            )
        node = os.environ["NODE_RANK"]
        if not node.isdigit() or int(node) >= cfg.num_nodes:
            raise UserError(f"NODE_RANK={node} must be in 0..{cfg.num_nodes - 1}")


def run_worker(cfg) -> None:
    """A rank > 0: receive the plan from rank 0, encode its share, write its shards, return."""
    world = relaunched_world()
    if world is not None:
        cfg.devices, cfg.num_nodes = int(world["devices"]), int(world["num_nodes"])
    predict_distributed(None, cfg, None)


def predict_distributed(plan: dict | None, cfg, encoder) -> bool:
    """Encode under Lightning DDP; ``plan`` (rank 0 only: items, config, index_dir, run,
    image_size) reaches the other ranks by broadcast. Returns True on global rank 0, after
    every rank's shards are committed and visible."""
    import lightning as L
    from lightning.pytorch.callbacks import BasePredictionWriter

    from video_retrieval.index.config import IndexConfig, load_models
    from video_retrieval.index.pipeline import ShardWriter, encode_videos, make_loader

    class PlanData(L.LightningDataModule):
        """Holds the plan; ``setup`` broadcasts it from rank 0 to every rank."""

        def __init__(self, plan):
            super().__init__()
            self.plan = plan

        def setup(self, stage):
            self.plan = self.trainer.strategy.broadcast(self.plan, src=0)
            self.cfg = IndexConfig(**self.plan["config"])

        def predict_dataloader(self):
            c = self.cfg
            return make_loader(
                self.plan["items"], c.sampling(), self.plan["image_size"], c.workers, batch_size=2
            )

    class EncodeModule(L.LightningModule):
        """The frame encoder; workers load the model the plan names in ``setup``."""

        def __init__(self, enc):
            super().__init__()
            self.encoder = enc

        def setup(self, stage):
            c = self.trainer.datamodule.cfg
            if self.encoder is None:
                self.encoder = load_models(c)[0]
            self.batch_size, self.patch_topk = c.batch_size, c.patches

        def predict_step(self, batch, batch_idx):
            return encode_videos(self.encoder, batch, self.batch_size, self.patch_topk)

    class ShardPredictionWriter(BasePredictionWriter):
        """Writes the predictions of each rank into its own shard set and journal."""

        def __init__(self):
            super().__init__(write_interval="batch")
            self.writer = None

        def setup(self, trainer, pl_module, stage):
            p, c = trainer.datamodule.plan, trainer.datamodule.cfg
            sink = None
            if p.get("milvus"):  # every rank inserts its frames into Milvus itself
                from video_retrieval.index.milvus_write import make_sink

                sink = make_sink(c, p["index_dir"], p["milvus"])
            self.writer = ShardWriter(
                p["index_dir"], p["run"], trainer.global_rank, c.shard_size, c.shard_frames, sink
            )

        def write_on_batch_end(
            self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx=0
        ):
            for item, emb, patches in prediction:
                if emb is None:
                    self.writer.fail(item, item["error"])
                else:
                    self.writer.add(item, emb, patches)

        def on_predict_end(self, trainer, pl_module):
            self.writer.flush()

    writer = ShardPredictionWriter()
    data = PlanData(plan)
    os.environ[WORKER_ENV] = json.dumps({"devices": cfg.devices, "num_nodes": cfg.num_nodes})
    try:
        trainer = L.Trainer(
            accelerator="gpu" if str(cfg.device).startswith("cuda") else "cpu",
            devices=cfg.devices,
            num_nodes=cfg.num_nodes,
            strategy="ddp",
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            callbacks=[writer],
        )
        trainer.predict(EncodeModule(encoder), datamodule=data, return_predictions=False)
        # what each rank committed: rank 0 waits until it can see all of it
        w = writer.writer
        mine = {"journal": str(w.journal.path), "lines": _lines_written(w)}
        everyone = [None] * trainer.world_size
        import torch.distributed as dist

        dist.all_gather_object(everyone, mine)
        trainer.strategy.barrier("vr-index-shards-written")
    finally:
        if plan is not None:
            os.environ.pop(WORKER_ENV, None)
    if trainer.is_global_zero:
        wait_for_journals(data.plan["index_dir"], everyone)
    return trainer.is_global_zero


def _lines_written(writer) -> int:
    p = Path(writer.journal.path)
    if not p.exists():
        return 0
    with open(p) as f:
        return sum(1 for line in f if line.endswith("\n"))


def wait_for_journals(index_dir, expected: list[dict], timeout: float = VISIBILITY_TIMEOUT_S):
    """Wait until every rank's journal shows the lines that rank wrote (a shared filesystem may
    show other machines' writes late); one line if they never appear."""
    deadline = time.monotonic() + timeout
    for rank, e in enumerate(expected):
        if not e or not e["lines"]:
            continue
        path = Path(e["journal"])
        while True:
            try:
                with open(path) as f:
                    seen = sum(1 for line in f if line.endswith("\n"))
            except FileNotFoundError:
                seen = 0
            if seen >= e["lines"]:
                break
            if time.monotonic() > deadline:
                raise UserError(
                    f"rank {rank} committed {e['lines']} journal line(s) to {path} but this "
                    f"machine sees {seen} after {timeout:.0f} s: --index must be a folder every "
                    "node shares (same path)"
                )
            time.sleep(0.5)
