"""``python3 -m sagellm.patchkit``: see :mod:`sagellm.patchkit.cli`."""

import sys

from sagellm.patchkit.cli import main

sys.exit(main())
