"""`python -m gateway ...` is `sqlward ...` (see gateway.cli)."""

from gateway.cli import main

raise SystemExit(main())
