"""``python -m video_retrieval.cli ...`` is ``vr ...``."""

import sys

from video_retrieval.cli.main import main

sys.exit(main())
