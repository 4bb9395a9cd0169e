"""``python -m drivemtl.converters FORMAT ...``: the same as ``drivemtl convert FORMAT ...``."""

import sys

from drivemtl.converters.cli import main

sys.exit(main())
