"""`python -m ferkit` runs the command-line interface."""

from ferkit.cli import main

raise SystemExit(main())
