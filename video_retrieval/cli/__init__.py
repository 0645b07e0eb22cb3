"""The ``vr`` command: parsing arguments and printing results, one module per subcommand.

Layer: the top. Modules here may import every other package of ``video_retrieval``; nothing imports
them (no logic another package needs lives here). ``main`` is the console entry point.
"""

from video_retrieval.cli.main import main

__all__ = ["main"]
