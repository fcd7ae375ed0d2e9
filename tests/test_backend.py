"""Backend selection in vmess._core: the compiled core when it is built, the pure twin when asked or missing."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Dict

import pytest

import vmess._core as core
from vmess import _core_py

ROOT = Path(__file__).resolve().parent.parent
NAMES = list(_core_py.__all__)
NATIVE_BUILT = importlib.util.find_spec("vmess._speedups") is not None
ENV_NO_EXT = os.environ.get("VMESS_NO_EXTENSIONS", "") not in ("", "0")

_PROBE = """
import json, vmess._core as c, vmess._core_py as p
try:
    import vmess._speedups as n
except ImportError:
    n = None
names = p.__all__
print(json.dumps({
    "backend": c.BACKEND,
    "no_extensions": c.NO_EXTENSIONS,
    "from_pure": all(getattr(c, k) is getattr(p, k) for k in names),
    "from_native": n is not None and all(getattr(c, k) is getattr(n, k) for k in names),
}))
"""


def _probe(no_ext: str | None) -> Dict[str, object]:
    env = dict(os.environ)
    env.pop("VMESS_NO_EXTENSIONS", None)
    if no_ext is not None:
        env["VMESS_NO_EXTENSIONS"] = no_ext
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    out = subprocess.run(
        [sys.executable, "-c", _PROBE], env=env, cwd=str(ROOT), capture_output=True, text=True, timeout=60, check=True
    )
    return json.loads(out.stdout)  # type: ignore[no-any-return]


def test_core_exports_every_name() -> None:
    for name in NAMES:
        assert hasattr(core, name), name
    assert core.BACKEND in ("native", "pure")


def test_this_process() -> None:
    if ENV_NO_EXT:
        assert core.BACKEND == "pure"
        for name in NAMES:
            assert getattr(core, name) is getattr(_core_py, name), name
    elif NATIVE_BUILT:
        import vmess._speedups as native

        assert core.BACKEND == "native"
        assert core.ChunkWriter is native.ChunkWriter
        for name in NAMES:
            assert getattr(core, name) is getattr(native, name), name
    else:
        assert core.BACKEND == "pure"


@pytest.mark.parametrize("value", ["1", "yes"])
def test_no_extensions_selects_pure(value: str) -> None:
    got = _probe(value)
    assert got == {"backend": "pure", "no_extensions": True, "from_pure": True, "from_native": False}


@pytest.mark.parametrize("value", [None, "", "0"])
def test_default_selects_native_when_built(value: str | None) -> None:
    got = _probe(value)
    assert got["no_extensions"] is False
    if NATIVE_BUILT:
        assert got["backend"] == "native"
        assert got["from_native"] is True
    else:
        assert got["backend"] == "pure"
        assert got["from_pure"] is True
