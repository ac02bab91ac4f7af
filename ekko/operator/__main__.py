"""``python -m ekko.operator``."""

from ekko.operator.main import main

raise SystemExit(main())
