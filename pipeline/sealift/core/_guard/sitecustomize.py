"""Installs sealift's network guard at interpreter start when SEALIFT_NET_GUARD=1.

Python imports `sitecustomize` from the first sys.path entry that has one; this
directory is put first on PYTHONPATH by `sealift.core.offline.guarded_env`. Any
sitecustomize that this one shadows (Debian's, a venv's) is run afterwards.
"""

import os
import sys


def _run_shadowed_sitecustomize() -> None:
    import importlib.machinery
    import importlib.util

    here = os.path.dirname(os.path.abspath(__file__))
    path = [p for p in sys.path if os.path.abspath(p or os.curdir) != here]
    spec = importlib.machinery.PathFinder.find_spec("sitecustomize", path)
    if spec is None or spec.loader is None:
        return
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)


if os.environ.get("SEALIFT_NET_GUARD") == "1":
    import sealift_net_guard

    sealift_net_guard.install()

_run_shadowed_sitecustomize()
