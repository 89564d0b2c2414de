"""`python -m supervisor` is `coproc`."""

import sys

from supervisor.cli import main

sys.exit(main())
