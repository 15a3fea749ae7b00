"""TorchServe compatibility: just enough of the ``ts`` package for ``.mar`` handlers to run without TorchServe.

This folder is put on ``sys.path`` only inside the pod process that serves a ``.mar``, so handler code written
for TorchServe (``from ts.torch_handler.base_handler import BaseHandler``) imports it unchanged.
"""

__version__ = "0.12.0"
