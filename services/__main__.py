"""``python -m services`` is the same as the ``llmsched`` console script."""

from services.cli import main

raise SystemExit(main())
