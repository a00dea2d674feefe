"""`python -m sealift`: the same command line as the `sealift` script."""

import sys

from sealift.cli import main

sys.exit(main())
