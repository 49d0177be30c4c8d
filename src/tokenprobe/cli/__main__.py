"""`python -m tokenprobe.cli`: the same as the `tokenprobe` command."""

import sys

from . import main

sys.exit(main())
