"""skelcl: contrastive self-supervised learning for skeleton action recognition."""

from __future__ import annotations

import importlib.util
import os
import sys

__version__ = "0.1.0"


def _expose_checkout_kernels() -> None:
    """Make ``skelcl.kernels`` importable from a source checkout.

    Installed, the Triton kernels in ``kernels/`` become the subpackage ``skelcl.kernels``. When
    Python picks ``skelcl`` up straight from a checkout (``python -m skelcl.train`` run in the repo
    root), no installer mapped that folder, so point the subpackage at it here.
    """
    if "skelcl.kernels" in sys.modules:
        return
    here = os.path.dirname(os.path.abspath(__file__))
    if os.path.isfile(os.path.join(here, "kernels", "__init__.py")):
        return  # an installed copy: the kernels sit inside the package
    checkout = os.path.join(os.path.dirname(here), "kernels")
    init = os.path.join(checkout, "__init__.py")
    if not os.path.isfile(init):
        return
    spec = importlib.util.spec_from_file_location(
        "skelcl.kernels", init, submodule_search_locations=[checkout]
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules["skelcl.kernels"] = module
    spec.loader.exec_module(module)
    globals()["kernels"] = module


_expose_checkout_kernels()
