"""``python -m drivemtl`` is the same as the ``drivemtl`` command."""

import sys

from drivemtl.cli import main

sys.exit(main())
