"""`python -m relay` runs the command-line interface."""

from relay.cli import main

raise SystemExit(main())
