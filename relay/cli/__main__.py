"""``python -m relay.cli``: the ``certifica`` command without its installed script."""

import sys

from relay.cli import main

sys.exit(main())
