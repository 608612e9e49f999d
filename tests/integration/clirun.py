"""Running ``task_queue_optimized.py`` in a subprocess the way the CLI tests do (for test modules)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "task_queue_optimized.py"
HANG_S = 120  # hang guard only


def cli(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """The command with ``args`` in ``cwd``: every ``TQ_*`` variable removed, ``env`` added."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("TQ_")}
    clean["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), clean.get("PYTHONPATH")]))
    clean.update(env or {})
    return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=cwd, env=clean,
                          capture_output=True, text=True, timeout=HANG_S)
