"""`python -m stlser.cli ...` runs the command line."""

import sys

from stlser.cli import main

sys.exit(main())
