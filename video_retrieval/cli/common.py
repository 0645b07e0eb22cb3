"""Arguments shared by several ``vr`` commands."""

from __future__ import annotations


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
