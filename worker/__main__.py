"""Entry point: `python -m worker --config FILE` (see worker.main)."""

from worker.main import main

raise SystemExit(main())
