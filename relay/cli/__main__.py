"""``python -m relay.cli``: the ``certifica`` command without its installed script."""

import sys

from relay.cli import main

if __name__ == "__main__":  # not on a mere import (a test walking every module imports it)
    sys.exit(main())
