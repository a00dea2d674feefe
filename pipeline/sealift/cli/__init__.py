"""The `sealift` command line, by stage (model, bento, bundle, host), thin: each command calls one step module.

Expected errors (sealift.core.errors.SealiftError) become one line on stderr and exit code 2 (bad input) or 1
(failure); nothing else prints a traceback unless SEALIFT_DEBUG=1. May import every other room.
"""

from sealift.cli.main import main

__all__ = ["main"]
