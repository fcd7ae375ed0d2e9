"""``python -m vmess``: the same CLI as the ``vmess`` console script."""

import sys

from .cli import main

sys.exit(main())
