from __future__ import annotations

from scanfort.cli import main

raise SystemExit(main())
