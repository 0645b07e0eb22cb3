"""Milvus as the index's vector store (``vr index --store milvus``): where the collections are,
what their rows hold, the connection and its errors. Read side and write side both use it
(``milvus_read``: search and frames; ``milvus_write``: the writer).

``--milvus-uri`` is what pymilvus takes: a local path ending in ``.db`` is Milvus Lite (an engine
embedded in the process, one process at a time per file; default ``INDEX/milvus.db``); an
``http(s)://host:19530`` URI is a Milvus server or cluster. The manifest records the URI (a
``.db`` inside the index folder relative to it, so the folder can move), the collections and a
random id written into each collection's properties, never the token (``--milvus-token`` or the
``VR_MILVUS_TOKEN`` environment variable, read by every command).

Collections (``NAME`` = ``--milvus-collection``)::

    NAME_videos   one row per indexed video (the pooled vector): id (the video key), gen (the
                  generation it became live in), dead (the generation it was removed in, 0 while
                  live), length (frames), duration, path, signature (content hash), vector
    NAME_frames   one row per frame: id = video key + frame number, video, t, time (s), vector
    NAME_patches  (--patches K) one row per frame: id as the frame's, video, its K patch tokens
                  flattened to one K*D vector

Keys. A video's key is the id of its first frame, built from where the writer put it: run (16
bits), rank (8), shard sequence (19) and the frame row in that shard (20), so a video's frames
are the consecutive ids ``key .. key + length - 1`` (read with one primary-key lookup) and a
killed run's unfinished shard is one id range to delete. Keys are never reused: a re-encoded
video gets a new one.

Versions. Readers filter ``gen <= G and (dead == 0 or dead > G)`` for the generation ``G`` the
manifest they opened names, so a writer's new rows (gen G + 1) and its removals (dead = G + 1)
are invisible to them until the manifest switches; rows removed two generations ago are deleted
(``milvus_write``), as the FAISS store deletes the files of generations before the previous one.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

from video_retrieval.errors import UserError

DIST_HINT = "pip install 'video-retrieval[milvus]'"
TOKEN_ENV = "VR_MILVUS_TOKEN"
DEFAULT_DB = "milvus.db"
#: seconds to wait for a Milvus server to answer the first call
CONNECT_TIMEOUT_S = 10.0
#: the property in each collection that ties it to one index (its value: the manifest's id)
INDEX_PROPERTY = "vr.index"
PATH_MAX = 65535  # Milvus VARCHAR limit (bytes)
#: bits of a key: run, rank, shard sequence, frame row in the shard
RUN_BITS, RANK_BITS, SEQ_BITS, ROW_BITS = 16, 8, 19, 20
#: rows per insert call (a gRPC message stays well under Milvus's 64 MB limit at D = 1024)
INSERT_BATCH = 2000
#: primary keys per get call
GET_BATCH = 4000


def pymilvus():
    """The ``pymilvus`` module, or one line saying how to install it."""
    # gRPC's C core logs a line whenever a process forks (decoding does) while its threads run
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    try:
        import pymilvus as module
    except ImportError:
        raise UserError(f"--store milvus needs pymilvus: {DIST_HINT}") from None
    # pymilvus logs every failed call with a traceback; errors reach users as one line instead
    # (grpc._server: Milvus Lite's in-process server logs the calls it does not implement,
    # which pymilvus then works around)
    for name in ("pymilvus", "milvus_lite", "grpc._server"):
        logging.getLogger(name).setLevel(logging.CRITICAL)
    return module


# -- where: URI, collections, keys -------------------------------------------------------------
def is_lite(uri: str) -> bool:
    return not re.match(r"^[a-z][a-z0-9+.-]*://", str(uri), re.IGNORECASE)


def check_uri(uri: str) -> str:
    uri = str(uri)
    if is_lite(uri):
        if not uri.endswith(".db"):
            raise UserError(
                f"--milvus-uri {uri}: give a Milvus Lite file ending in .db or a server URI "
                "(http://host:19530)"
            )
        return uri
    if not re.match(r"^(https?|tcp|grpc|unix)://", uri, re.IGNORECASE):
        raise UserError(f"--milvus-uri {uri}: a server URI starts with http:// or https://")
    return uri


def default_collection(index_dir: Path) -> str:
    """A collection name from the index folder's name (letters, digits, underscores)."""
    stem = re.sub(r"[^0-9A-Za-z_]", "_", Path(index_dir).name)[:40] or "index"
    return "vr_" + stem


def check_collection_name(name: str) -> str:
    # the longest suffix is _patches; Milvus names are at most 255 characters
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,200}", name or ""):
        raise UserError(
            f"--milvus-collection {name!r}: use letters, digits and underscores, starting with "
            "a letter (at most 200 characters)"
        )
    return name


@dataclass(frozen=True)
class Target:
    """Where an index's vectors are: the URI as given or recorded, and the collection prefix."""

    uri: str
    collection: str
    index_dir: Path

    @classmethod
    def of_manifest(cls, index_dir, manifest: dict) -> Target:
        s = manifest["store"]
        return cls(s["uri"], s["collection"], Path(index_dir))

    @property
    def resolved_uri(self) -> str:
        """The URI pymilvus is given: a relative Lite path is inside the index folder."""
        if is_lite(self.uri) and not os.path.isabs(self.uri):
            return str(self.index_dir / self.uri)
        return self.uri

    @property
    def recorded_uri(self) -> str:
        """The URI the manifest records: a Lite file inside the index folder relative to it."""
        if is_lite(self.uri):
            p = Path(self.uri).expanduser()
            p = p if p.is_absolute() else Path.cwd() / p
            try:
                return str(p.resolve().relative_to(self.index_dir.resolve()))
            except ValueError:
                return str(p.resolve())
        return self.uri

    def name(self, part: str) -> str:
        return f"{self.collection}_{part}"

    def shown(self) -> str:
        return f"Milvus Lite {self.resolved_uri}" if is_lite(self.uri) else f"Milvus {self.uri}"


def token_from(given: str | None) -> str:
    return given if given else os.environ.get(TOKEN_ENV, "")


def shard_base(shard: str) -> int:
    """The first key of shard ``RUN-RANK-SEQ`` (``files.shard_name``)."""
    run, rank, seq = (int(x) for x in shard.split("-"))
    for value, bits, what in ((run, RUN_BITS, "run"), (rank, RANK_BITS, "rank"),
                              (seq, SEQ_BITS, "shard number")):  # fmt: skip
        if value >= 1 << bits:
            raise UserError(
                f"shard {shard}: its {what} ({value}) is beyond what Milvus keys hold "
                f"(< {1 << bits}); start a new index"
            )
    return ((run << RANK_BITS | rank) << SEQ_BITS | seq) << ROW_BITS


def video_key(shard: str, offset: int, length: int) -> int:
    if offset + length > 1 << ROW_BITS:
        raise UserError(
            f"shard {shard} holds more than {1 << ROW_BITS} frames; use a smaller --shard-size"
        )
    return shard_base(shard) + int(offset)


def run_range(run: int) -> tuple[int, int]:
    """Keys of every shard a run wrote: [first, end)."""
    shift = RANK_BITS + SEQ_BITS + ROW_BITS
    return run << shift, (run + 1) << shift


def rank_range(run: int, rank: int, first_seq: int = 0) -> tuple[int, int]:
    """Keys of the shards ``first_seq`` onwards that one rank of a run wrote: [first, end)."""
    start = (((run << RANK_BITS) + rank << SEQ_BITS) + first_seq) << ROW_BITS
    end = ((run << RANK_BITS) + rank + 1) << (SEQ_BITS + ROW_BITS)  # rank 255: the next run's
    return start, end


# -- the connection and its errors -------------------------------------------------------------
def _lite_locked_by_other(path: str) -> bool:
    """Is the Lite data folder held by another process (Milvus Lite's own ``LOCK`` file)?"""
    from video_retrieval.index.files import lock_held

    return lock_held(Path(path) / "LOCK")


#: one client per address and token, made once per process: pymilvus's shared connections
#: fail to reconnect after half a minute idle (its health check), a dedicated one does not
_CLIENTS: dict[tuple[str, str], object] = {}


def _lite_address(uri: str) -> str:
    """The address of the in-process Milvus Lite server of file ``uri`` (started once)."""
    from milvus_lite.server_manager import server_manager_instance

    address = server_manager_instance.start_and_get_uri(uri)
    if address is None:
        if _lite_locked_by_other(uri):
            raise UserError(
                f"Milvus Lite file {uri} is open in another process (Milvus Lite serves one "
                f"process at a time): stop it, or serve the file with `milvus-lite server "
                f"--data-dir {uri}` and use --milvus-uri http://127.0.0.1:19530"
            )
        raise UserError(f"Milvus Lite could not open {uri} (not a Milvus Lite folder?)")
    return address


def connect(target: Target, token: str | None = None, create: bool = False):
    """A ``MilvusClient`` for ``target``; one-line ``UserError``s for what users can fix: a
    missing pymilvus or Milvus Lite, a Lite file another process holds, an unreachable server,
    a refused token."""
    pm = pymilvus()
    uri = address = target.resolved_uri
    if is_lite(target.uri):
        try:
            import milvus_lite  # noqa: F401
        except ImportError:
            raise UserError(f"a Milvus Lite file ({uri}) needs milvus-lite: {DIST_HINT}") from None
        if not create and not os.path.exists(uri):
            raise UserError(
                f"the index's Milvus Lite file {uri} is missing (moved or deleted); rebuild the "
                "index or put the file back"
            )
        Path(uri).parent.mkdir(parents=True, exist_ok=True)
        address = _lite_address(uri)
    key = (address, token_from(token))
    cached = _CLIENTS.pop(key, None)
    try:
        if cached is not None:
            try:
                cached.list_collections()  # still answers: reuse it
                _CLIENTS[key] = cached
                return cached
            except Exception:  # noqa: BLE001  a server restarted, a channel gone: a new client
                pass
        client = pm.MilvusClient(uri=address, token=key[1], timeout=CONNECT_TIMEOUT_S,
                                 dedicated=True)  # fmt: skip
        client.list_collections()  # the server answers, and takes the token
    except Exception as exc:  # noqa: BLE001  pymilvus raises MilvusException and gRPC errors
        raise milvus_error(exc, target) from None
    _CLIENTS[key] = client
    return client


def _message(exc: BaseException) -> str:
    text = getattr(exc, "message", None) or str(exc) or type(exc).__name__
    return " ".join(str(text).split())[:200]


def milvus_error(exc: BaseException, target: Target, doing: str = "") -> UserError:
    """One line for an exception of pymilvus: unreachable, refused token, missing collection,
    anything else with Milvus's own message."""
    if isinstance(exc, UserError):
        return exc
    text = _message(exc)
    low = text.lower()
    code = getattr(exc, "code", None)
    where = target.shown()
    if code == 1800 or any(w in low for w in ("auth", "credential", "unauthenticated",
                                              "permission denied", "privilege")):  # fmt: skip
        return UserError(
            f"{where} refused the token ({text}); give the right one with --milvus-token or "
            f"{TOKEN_ENV}"
        )
    if code == 2 or "fail connecting" in low or "unavailable" in low or "deadline" in low:
        return UserError(f"cannot reach {where} ({text}); start the server or check --milvus-uri")
    if code == 100 or ("collection" in low and ("not exist" in low or "not found" in low)):
        return UserError(
            f"{where} has no collection the index needs ({text}); it was dropped or the "
            "index points at another server: rebuild the index (vr index ... --store milvus)"
        )
    return UserError(f"{where}{': ' + doing if doing else ''}: {text}")


class Calls:
    """The client's calls with one-line errors (``milvus_error``)."""

    def __init__(self, client, target: Target):
        self.client = client
        self.target = target

    def __call__(self, method: str, *args, **kwargs):
        for attempt in range(2):
            try:
                return getattr(self.client, method)(*args, **kwargs)
            except Exception as exc:  # noqa: BLE001
                # a writer changing the index releases the collection for a moment (Milvus
                # needs it released to drop an index): a reader loads it again and retries
                # (Milvus Lite opens a file with its collections released: the same remedy)
                low = _message(exc).lower()
                if attempt == 0 and args and ("not loaded" in low or "released" in low):
                    try:
                        self.client.load_collection(args[0])
                        continue
                    except Exception:  # noqa: BLE001, S110  the first error is the one to report
                        pass
                raise milvus_error(exc, self.target, method.replace("_", " ")) from None


def check_collections(calls: Calls, manifest: dict, dim: int) -> dict[str, str]:
    """The index's collections, each checked: present, made for this index (``INDEX_PROPERTY``),
    vectors of the index's dimension. Returns {part: name}."""
    store = manifest["store"]
    out = {}
    for part, name in store["collections"].items():
        if not name:
            continue
        if not calls("has_collection", name):
            raise UserError(
                f"{calls.target.shown()} has no collection {name} (the index's {part}); it was "
                "dropped or the index points at another server: check --milvus-uri, or rebuild "
                "with vr index --repair"
            )
        info = calls("describe_collection", name)
        owner = (info.get("properties") or {}).get(INDEX_PROPERTY)
        if owner != store["index_id"]:
            raise UserError(
                f"collection {name} in {calls.target.shown()} belongs to another index "
                f"({INDEX_PROPERTY} {owner!r}, this index {store['index_id']!r}); use another "
                "--milvus-collection"
            )
        want = dim * (manifest_patch_topk(manifest) if part == "patches" else 1)
        got = vector_dim(info)
        if got != want:
            raise UserError(
                f"collection {name} in {calls.target.shown()} holds {got}-dimensional vectors, "
                f"the index {want}: it was built with another model; use another "
                "--milvus-collection or rebuild"
            )
        out[part] = name
    return out


def manifest_patch_topk(manifest: dict) -> int:
    return int((manifest["fingerprint"].get("patches") or {}).get("topk", 0))


def vector_dim(info: dict) -> int | None:
    for f in info.get("fields", []):
        if f.get("name") == "vector":
            return int((f.get("params") or {}).get("dim", 0))
    return None


def generation_filter(gen: int) -> str:
    """The rows of the videos collection live in generation ``gen``."""
    return f"gen <= {int(gen)} and (dead == 0 or dead > {int(gen)})"


def ids_filter(ranges: list[tuple[int, int]]) -> str:
    """Rows whose id is in any of the [first, end) ``ranges``."""
    return " or ".join(f"(id >= {a} and id < {b})" for a, b in ranges)
