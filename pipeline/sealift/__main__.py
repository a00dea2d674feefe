import sys

from sealift.cli import main

sys.exit(main())
