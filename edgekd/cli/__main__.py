"""`python -m edgekd.cli ...` (and `torchrun ... -m edgekd.cli compress ...`)."""

import sys

from edgekd.cli.app import main

sys.exit(main())
