"""`python -m sqlward.gateway ...` is `sqlward ...` (see gateway.cli)."""

from sqlward.gateway.cli import main

raise SystemExit(main())
