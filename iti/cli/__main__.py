"""``python -m iti.cli ...``: the same as the ``iti`` console script."""
from .commands import main

raise SystemExit(main())
