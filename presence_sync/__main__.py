"""``python -m presence_sync`` is the ``presence-sync`` command."""

from presence_sync.cli import main

raise SystemExit(main())
