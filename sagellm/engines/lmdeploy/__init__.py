"""The LMDeploy integration: the only sagellm package that imports ``lmdeploy``.

Importing it has no side effects; LMDeploy installs the plugins through the
``lmdeploy.plugins`` entry point (``sagellm.engines.lmdeploy.plugin:install``).
"""

from sagellm.engines.lmdeploy.plugin import install

__all__ = ["install"]
