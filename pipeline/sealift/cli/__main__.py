"""`python -m sealift.cli`: the `sealift` command line."""

import sys

from sealift.cli import main

sys.exit(main())
