"""vmess: V2Ray's VMess proxy protocol for Python (a Cython core with a pure-Python twin)."""

from __future__ import annotations

__version__ = "0.1.0"
