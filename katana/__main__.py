"""Allow ``python -m katana``."""

from katana.cli import main

raise SystemExit(main())
