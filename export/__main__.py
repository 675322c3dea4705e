"""``python -m export``: same as ``emotion-export``."""

import sys

from export.cli import main

sys.exit(main())
