"""What a ``vr index`` run encodes with: its options (``IndexConfig``), the models they resolve
to (``load_models``: a vr train checkpoint, CLIP weights, or an existing index's own model), and
the fingerprint that ties an index to them (``make_fingerprint``; ``mismatch_error`` names the
flag that differs in one line)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

from video_retrieval.errors import UserError
from video_retrieval.limits import check
from video_retrieval.media.files import content_hash
from video_retrieval.models.weights import (
    checkpoint_kind,
    describe_weights,
    manifest_weights,
    resolve_encoder_args,
    weights_line,
)


@dataclass
class IndexConfig:
    """Options of ``vr index`` / ``Index.build``.

    Model: ``model`` + ``pretrained`` (tag or file), ``checkpoint`` (a ``vr train`` retrieval
    checkpoint or CLIP weights), or ``random_weights`` (tests only); nothing given means
    ``ViT-B-32`` / ``laion2b_s34b_b79k`` for a new index and the index's own model for an
    existing one (``models.weights``). Sampling: ``fps`` or ``num_frames``; default: a
    checkpoint's own sampling, else the index's, else 1 fps.
    """

    model: str | None = None
    pretrained: str | None = None
    checkpoint: str | None = None
    random_weights: bool = False
    fps: float | None = None
    num_frames: int | None = None
    symmetric_window: bool | None = None  # sample between the first and last frame centres
    batch_size: int = 64  # frames per encoder batch
    workers: int = 0  # DataLoader workers decoding videos
    devices: int = 1  # > 1: Lightning DDP on CPU processes
    prune: bool = False
    shard_size: int = 64  # videos per shard (at most)
    shard_frames: int = 8192  # frames per shard (at most, unless one video has more)
    progress: bool | None = None  # None: a bar when stderr is a TTY
    # auto | ann.KINDS (flat, hnsw, ivf, fp16, sq8, hnsw-sq8, ivf-sq8, ivf-pq); None: the
    # index's own choice (auto for a new index)
    ann: str | None = None
    target_recall: float | None = None  # tuned to reach it, else exact (None: index's own / 0.95)
    max_memory: str | int | None = None  # --ann auto: memory budget of the ANN (None: RAM / 2)
    recall_captions: str | None = None  # captions.jsonl / text file: text queries for recall
    recall_sample: int = 1000  # sampled collection vectors (and at most as many captions)
    num_nodes: int = 1  # > 1: Lightning multi-node DDP (one process per node launched each)
    precision: str = "auto"
    device: str = "cpu"
    patches: int | None = None  # K patch tokens per frame closest to CLS; None: index's own / 0
    backend: str = "open_clip"  # or "hf": a Hugging Face CLIP directory / hub id as ``model``
    wait: bool = True  # another writer holds the index: wait (False: one-line error)
    encoder_spec: dict | None = None  # set from an existing index's manifest (reuse its model)
    # where the vectors go: "faiss" (files in the index folder) or "milvus"; None: the index's
    # own (faiss for a new index, milvus when a --milvus-* option is given)
    store: str | None = None
    milvus_uri: str | None = None  # a Milvus Lite .db path or http(s)://host:19530
    milvus_collection: str | None = None  # the collections' name prefix
    milvus_token: str | None = field(default=None, repr=False)  # never written anywhere

    def model_flags_given(self) -> bool:
        return bool(
            self.model or self.pretrained or self.checkpoint or self.random_weights
            or self.backend != "open_clip" or self.encoder_spec
        )  # fmt: skip

    def check(self) -> IndexConfig:
        """Refuse numeric options outside ``limits.BOUNDS`` (the bounds of the CLI flags) and
        an unknown store."""
        if self.store not in (None, "faiss", "milvus"):
            raise UserError(f"--store {self.store!r}: choose faiss or milvus")
        for name in ("batch_size", "workers", "devices", "num_nodes", "shard_size",
                     "recall_sample", "fps", "num_frames", "patches", "target_recall"):  # fmt: skip
            value = getattr(self, name)
            if value is not None:
                setattr(self, name, check(name, value))
        return self

    def sampling(self) -> dict:
        if self.fps is not None and self.num_frames is not None:
            raise UserError("give --fps or --num-frames, not both")
        if self.num_frames is not None:
            out = {"fps": None, "num_frames": check("num_frames", self.num_frames)}
        else:
            fps = 1.0 if self.fps is None else check("fps", self.fps)
            out = {"fps": float(fps), "num_frames": None}
        if self.symmetric_window:  # recorded only when on: older fingerprints stay equal
            out["symmetric_window"] = True
        return out


# -- models and fingerprint ---------------------------------------------------------------------
def _file_sha256(path) -> str:
    return content_hash(path)


def reuse_index_settings(cfg: IndexConfig, manifest: dict) -> IndexConfig:
    """``cfg`` with the model, sampling and patches of an existing index wherever the user gave
    none, so an incremental run needs only the inputs and ``--index``."""
    m = manifest["model"]
    kw = {}
    if not cfg.model_flags_given():
        if m.get("checkpoint"):
            kw["checkpoint"] = m["checkpoint"]
        else:
            kw["encoder_spec"] = dict(m["encoder_spec"])
    sampling = manifest["fingerprint"].get("sampling") or {}
    if cfg.fps is None and cfg.num_frames is None and cfg.symmetric_window is None:
        kw.update(
            fps=sampling.get("fps"),
            num_frames=sampling.get("num_frames"),
            symmetric_window=bool(sampling.get("symmetric_window", False)),
        )
    if cfg.patches is None:
        kw["patches"] = int((manifest["fingerprint"].get("patches") or {}).get("topk", 0))
    return replace(cfg, **kw)


def load_models(cfg: IndexConfig):
    """(encoder, pooling aggregator, model description for the manifest, aggregator label,
    the checkpoint's own sampling or None)."""
    from video_retrieval.encoders.factory import create_encoder
    from video_retrieval.temporal import build_aggregator

    kind = checkpoint_kind(cfg.checkpoint) if cfg.checkpoint else None
    if kind == "moment":
        raise UserError(
            f"{cfg.checkpoint} is a moment-head checkpoint (for vr localize --checkpoint); "
            "vr index takes a vr train retrieval checkpoint or CLIP weights"
        )
    if kind == "retrieval":
        if cfg.model or cfg.pretrained or cfg.random_weights or cfg.backend != "open_clip":
            raise UserError(
                f"--checkpoint {cfg.checkpoint} is a vr train checkpoint and names its own "
                "model: drop --model/--pretrained/--random-weights/--backend"
            )
        from video_retrieval.models.checkpoints import load_retrieval_model

        ckpt = Path(cfg.checkpoint).expanduser().resolve()
        encoder, agg, meta = load_retrieval_model(str(ckpt), cfg.device, cfg.precision)
        sha = _file_sha256(ckpt)
        info = {
            "checkpoint": str(ckpt),
            "checkpoint_sha256": sha,
            "weights": describe_weights(None, str(ckpt)),
        }
        if agg.query_dependent:
            pool, label = build_aggregator("mean", encoder.embed_dim), "mean"
        else:
            pool, label = agg.eval(), f"{agg.name}@{sha[:16]}"
        own = {"num_frames": meta["num_frames"], "symmetric_window": meta["symmetric_window"]}
    else:
        if cfg.encoder_spec:
            args = {**cfg.encoder_spec, "precision": cfg.precision, "device": cfg.device}
        else:
            args = resolve_encoder_args(
                cfg.model, cfg.pretrained, cfg.checkpoint, cfg.backend, cfg.random_weights
            )
            args.update(precision=cfg.precision, device=cfg.device)
        encoder = create_encoder(**args)
        info = {"encoder_spec": encoder.spec, "weights": describe_weights(encoder.spec)}
        pool, label = build_aggregator("mean", encoder.embed_dim), "mean"
        own = None
    encoder.eval()
    return encoder, pool.eval(), info, label, own


def with_checkpoint_sampling(cfg: IndexConfig, own: dict | None) -> IndexConfig:
    """A checkpoint's own frame sampling is the default when indexing with it."""
    if own is None or cfg.fps is not None or cfg.num_frames is not None:
        return cfg
    sym = own.get("symmetric_window") if cfg.symmetric_window is None else cfg.symmetric_window
    return replace(cfg, num_frames=int(own["num_frames"]), symmetric_window=bool(sym))


def make_fingerprint(encoder, cfg: IndexConfig, aggregator_label: str) -> dict:
    patches = check("patches", cfg.patches or 0)
    fp = {
        "encoder": encoder.fingerprint(),
        "sampling": cfg.sampling(),
        "aggregator": aggregator_label,
    }
    if patches:  # an index with patch tokens is another index (UCoFiA can rerank it)
        fp["patches"] = {"topk": patches, "criterion": "cosine-to-cls"}
    return fp


_FLAG_OF = {
    "encoder": "the model (--model/--pretrained/--checkpoint)",
    "aggregator": "the checkpoint (--checkpoint)",
    "sampling": "the sampling (--fps/--num-frames)",
    "patches": "the patch tokens (--patches)",
}


def _sampling_line(sampling: dict) -> str:
    if sampling.get("num_frames"):
        return f"--num-frames {sampling['num_frames']}"
    return f"--fps {sampling.get('fps')}"


def mismatch_error(index_dir, manifest: dict, keys: list[str]) -> UserError:
    built = manifest_weights(manifest)
    what = ", ".join(_FLAG_OF.get(k, k) for k in keys)
    return UserError(
        f"index {index_dir} was built with {weights_line(built)}, "
        f"{_sampling_line(manifest['fingerprint'].get('sampling') or {})}; this run differs in "
        f"{what}: drop those flags to reuse the index's own settings, or use another --index"
    )
