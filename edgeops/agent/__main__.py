"""`python -m edgeops.agent run BUNDLE ...`: the same as `edgeops agent run ...`."""
from __future__ import annotations

import sys

from .cli import main

sys.exit(main())
