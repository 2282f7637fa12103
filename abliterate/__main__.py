"""``python -m abliterate``: the same command line as the ``abliterate`` script."""

import sys

from abliterate.search.cli import main

sys.exit(main())
