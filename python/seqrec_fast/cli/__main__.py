"""``python -m seqrec_fast.cli``."""

from . import main

raise SystemExit(main())
