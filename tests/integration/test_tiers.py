"""The unit tier is what it says: the engine's loop tests run without Prefect."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_the_engine_loop_tests_never_import_prefect():
    code = (
        "import sys, pytest\n"
        "rc = pytest.main(['-q', '-p', 'no:cacheprovider', 'tests/unit/test_engine_loop.py'])\n"
        "leaked = sorted(m for m in sys.modules if m == 'prefect' or m.startswith('prefect.'))\n"
        "print('PREFECT_MODULES', len(leaked))\n"
        "sys.exit(rc or (3 if leaked else 0))\n"
    )
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert "PREFECT_MODULES 0" in r.stdout and " passed" in r.stdout
