"""``python -m conelayers diagnose FILE``."""

import sys

from conelayers.cli import main

sys.exit(main())
