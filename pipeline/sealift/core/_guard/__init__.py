"""The network guard's bootstrap directory.

This directory is put first on PYTHONPATH of guarded processes (see
`sealift.core.offline.guarded_env`): its `sitecustomize.py` installs the guard at
interpreter start when SEALIFT_NET_GUARD=1, in any Python, including runtime
venvs that do not have sealift installed. `sealift_net_guard.py` is the guard
itself and imports nothing but the standard library.
"""
