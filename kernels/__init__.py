"""Triton kernels of skelcl, installed as ``skelcl.kernels``.

Only kernels and their launch helpers live here: no nn.Modules and no training logic. The public,
dispatching entry points are in ``skelcl.ops``. Modules import triton at import time, so import
them lazily (``from skelcl.kernels import ntxent``) where triton may be missing.
"""
