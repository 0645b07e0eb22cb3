"""``vr serve --index DIR``: the index as an HTTP/JSON service with a search page
(see ``video_retrieval.web``)."""

from __future__ import annotations

import os
import sys

from video_retrieval.cli.common import bounded


def add_arguments(parser) -> None:
    parser.add_argument(
        "--index", required=True, metavar="DIR", help="index directory built by vr index"
    )
    parser.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to bind (default 127.0.0.1: this machine only); any other address "
        "requires --token",
    )
    parser.add_argument("--port", type=int, default=8000, help="TCP port (default 8000)")
    parser.add_argument(
        "--token",
        default=os.environ.get("VR_SERVE_TOKEN"),
        help="require this token on every request (Authorization: Bearer T, or ?token=T; open "
        "the page as /?token=T); default $VR_SERVE_TOKEN. Required off loopback",
    )
    parser.add_argument(
        "--localize-checkpoint",
        default=None,
        metavar="CKPT",
        help="moment head (vr train ... moments) for /api/localize; default: zero-shot over the "
        "index's own frame embeddings",
    )
    parser.add_argument(
        "--rerank",
        default="auto",
        help="default reranker: auto | none | cliprerank | query_scored | mean | a checkpoint "
        "path (auto, as vr search: query_scored when the index's median video is 30 s or "
        "longer, none for shorter ones); requests may choose auto, none, cliprerank, "
        "query_scored, mean or this one",
    )
    parser.add_argument(
        "--candidates",
        type=bounded("candidates"),
        default=100,
        help="stage-1 ANN candidates (default 100)",
    )
    parser.add_argument(
        "--cache-dir",
        default=None,
        help="thumbnails and playable proxies (default: INDEX/serve_cache)",
    )
    parser.add_argument(
        "--thumb-cache-mb", type=float, default=64.0, help="thumbnail cache bound (default 64)"
    )
    parser.add_argument(
        "--media-cache-mb",
        type=float,
        default=2048.0,
        help="bound of the cache of browser-playable proxies (default 2048)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch/FAISS threads per request (default 1: a one-query forward pass gains "
        "nothing from more, and requests already run side by side)",
    )
    parser.add_argument(
        "--reload-interval",
        type=float,
        default=5.0,
        metavar="SECONDS",
        help="check the index for updates (vr index run again) this often and serve the new "
        "version without a restart (default 5; 0: never; POST /api/reload checks at once)",
    )
    parser.add_argument(
        "--access-log", action="store_true", help="log one line per request (no query strings)"
    )


def check_port_free(host: str, port: int) -> None:
    """Fail in one line, before loading models, when the address cannot be bound."""
    import socket

    from video_retrieval.errors import UserError

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as exc:
            raise UserError(
                f"cannot listen on {host}:{port} ({exc.strerror}); choose another --port"
            ) from None


def run(args) -> int:
    if args.threads >= 1:  # before torch/FAISS load: OpenMP's default for every thread
        os.environ["OMP_NUM_THREADS"] = str(args.threads)
    import logging

    import uvicorn

    from video_retrieval.web.app import create_app
    from video_retrieval.web.config import ServeConfig
    from video_retrieval.web.state import load_state, set_threads

    config = ServeConfig(
        index=args.index,
        host=args.host,
        port=args.port,
        token=args.token or None,
        localize_checkpoint=args.localize_checkpoint,
        rerank=args.rerank,
        candidates=args.candidates,
        cache_dir=args.cache_dir,
        thumb_cache_mb=args.thumb_cache_mb,
        media_cache_mb=args.media_cache_mb,
        reload_interval=args.reload_interval,
    ).check()
    check_port_free(config.host, config.port)
    # our own messages at INFO; libraries only when something is wrong (faiss names every
    # SIMD build it tries, open_clip how it found the tokenizer)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("video_retrieval").setLevel(logging.INFO)
    logging.getLogger("video_retrieval.web.access").setLevel(
        logging.INFO if args.access_log else logging.WARNING
    )
    set_threads(args.threads)
    state = load_state(config)  # before binding: a bad index fails as a one-line error
    app = create_app(config, state=state, access_log=args.access_log)
    host = f"[{config.host}]" if ":" in config.host else config.host
    print(
        f"vr serve: {len(state.index)} videos from {config.index}, loaded in "
        f"{state.load_seconds:.1f} s; open http://{host}:{config.port}/"
        + ("?token=..." if config.token else ""),
        file=sys.stderr,
        flush=True,
    )
    uvicorn.run(app, host=config.host, port=config.port, access_log=False, log_level="warning")
    return 0
