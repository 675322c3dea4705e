"""``python -m export``: same as ``emotion-export``."""

import sys

from emotion2vec_serving.export.cli import main

sys.exit(main())
