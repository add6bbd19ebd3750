"""patchkit: the toolchain for sagellm's LMDeploy patch series.

Stdlib only, so it runs under a plain ``python3`` before any virtual environment
exists (``scripts/apply_patches.sh`` and ``scripts/setup.sh`` depend on that).
Importing it has no side effects.

Commands (``python3 -m sagellm.patchkit --help``, or ``sage patches ...``):

* ``apply``   fetch + verify + extract the pinned release, apply the series, swap in atomically;
* ``check``   rebuild in a temporary directory and list drifted files; lint headers; round-trip;
* ``reverse`` / ``clean``  restore the pristine tree / remove the generated tree;
* ``lint``    series and patch headers (Subject, Why, Upstream-Status, Hooks, Tests);
* ``workspace`` / ``export``  edit patches as git commits, write them back as files;
* ``rebase`` / ``compat``  carry the series to newer releases and tabulate the results.

Modules: ``upstream`` (pin file), ``layout`` (paths), ``fetch`` (download + checksum),
``wheel`` (extraction), ``pristine``, ``series``, ``header``, ``diffparse``, ``lint``,
``tools`` (git / GNU patch), ``applier``, ``tree``, ``stamp``, ``build``, ``pyproject``,
``ops`` (apply/check/reverse/clean), ``workspace`` (workspace/export), ``rebase``, ``compat``,
``cli`` (argument parsing for ``python3 -m sagellm.patchkit``).
"""

from sagellm.patchkit.errors import ExitCode, PatchkitError
from sagellm.patchkit.layout import Layout

__all__ = ["ExitCode", "Layout", "PatchkitError"]
