"""``python -m ravis.cli``: the same as the ``ravis`` command."""

import sys

from . import main

sys.exit(main())
