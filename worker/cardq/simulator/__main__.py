"""``python -m cardq.simulator``: the same as ``cardq simulate``."""

import sys

from .cli import main

sys.exit(main())
