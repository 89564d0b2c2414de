"""`python -m bench`: run the benchmark suite (see bench/run.py for options)."""

import sys

from bench.run import main

sys.exit(main())
