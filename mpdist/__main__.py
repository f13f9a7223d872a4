"""``python -m mpdist``: the same entry point as the ``mpdist`` console script."""

from mpdist.cli import main

raise SystemExit(main())
