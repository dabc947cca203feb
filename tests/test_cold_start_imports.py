"""Zip functions must import without the media stack, and keep heavy modules lazy.

The plan, stage and API functions ship without PyAV, numpy or ffmpeg, and every module a
handler imports at load time is paid on each cold start.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Modules a zip function must not load when its handler module is imported.
HEAVY = ["av", "numpy", "google.genai", "eth_abi", "coincurve", "moto"]

# Modules each zip function imports lazily, at call time; they too must load without the
# media stack, because the zip packages do not contain it.
CALL_TIME_MODULES = {
    "api": ["ecliptic.x402.verify", "ecliptic.x402.facilitator", "ecliptic.x402.client"],
    "stage_asset": ["ecliptic.staging", "ecliptic.fetch"],
    "plan": ["ecliptic.frame", "ecliptic.planner", "ecliptic.plan_normalizer"],
    "notify": ["ecliptic.outcome", "ecliptic.webhooks"],
}

PROBE = """
import importlib, importlib.abc, importlib.util, json, sys
heavy = {heavy}

class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in {{"av", "numpy"}}:
            raise ImportError(f"{{name}} is not in this function's package")
        return None

sys.meta_path.insert(0, Block())
spec = importlib.util.spec_from_file_location("handler_under_test", {path!r})
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
loaded = sorted(name for name in heavy if name in sys.modules)
for name in {call_time}:
    importlib.import_module(name)
print(json.dumps(loaded))
"""


@pytest.mark.parametrize("function", sorted(CALL_TIME_MODULES))
def test_zip_handler_imports_light(function: str) -> None:
    """The handler loads no heavy module, and nothing it calls needs PyAV or numpy."""
    path = ROOT / "functions" / function / "app.py"
    code = PROBE.format(
        heavy=json.dumps(HEAVY),
        path=str(path),
        call_time=json.dumps(CALL_TIME_MODULES[function]),
    )

    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT
    )

    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads(result.stdout.strip().splitlines()[-1]) == []
