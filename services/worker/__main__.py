"""``python -m services.worker`` runs the worker agent."""

from services.worker.main import main

raise SystemExit(main())
