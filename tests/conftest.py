"""Shared test setup: report which core backend is live (the suite runs once per backend)."""

from __future__ import annotations

from vmess import _core


def pytest_report_header(config: object) -> str:
    return f"vmess core backend: {_core.BACKEND}"
