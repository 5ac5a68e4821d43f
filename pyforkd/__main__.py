"""``python -m pyforkd``: the ``pyforkd`` command (see :mod:`pyforkd.cli`)."""

import sys

from .cli import main

sys.exit(main())
