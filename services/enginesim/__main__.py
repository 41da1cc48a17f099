"""``python -m services.enginesim`` runs the engine simulator CLI."""

from services.enginesim.cli import main

raise SystemExit(main())
