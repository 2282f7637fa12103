import sys

from abliterate.search.cli import main

sys.exit(main())
