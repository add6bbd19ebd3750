"""sagellm: a patch-and-extend layer over LMDeploy v0.11.0's PyTorch engine.

Importing this package has no side effects; plugins are installed explicitly by
``sagellm.engines.lmdeploy.plugin.install`` (LMDeploy calls it through the
``lmdeploy.plugins`` entry point added by patch 0001).
"""

__version__ = "0.1.0"
