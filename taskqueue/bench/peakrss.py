"""Peak RSS of a command as the kernel accounts it, measured from a fresh, small process.

    python -m taskqueue.bench.peakrss LOG CMD...    (prints one line of JSON: exit, peak_rss_kib, wall_s)

Why a wrapper: on Linux a child's ``ru_maxrss`` starts from the memory image
of the process that started it (the image it replaces at ``exec`` is counted),
so a benchmark parent that has drawn 24 MP photos, or that simply is large,
would pass its own peak on to every child it measures. Here a fresh
interpreter of a few MiB starts the command and reads that child's own
``ru_maxrss`` with ``os.wait4``. POSIX only (:func:`available`).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time

from .impls import REPO_ROOT

TIMEOUT_S = 600.0  # guards against a hung command; no measured command comes near it


def available() -> bool:
    return hasattr(os, "wait4")


def measure(cmd: list[str], *, log: str, cwd: str | None = None) -> dict:
    """Run ``cmd`` in ``cwd`` (its output to the file ``log``) under the wrapper; blocks until it exits.

    Returns ``{"exit", "peak_rss_kib", "wall_s"}``; raises RuntimeError if the wrapper itself fails.
    """
    return python_module(__name__, [log, *cmd], cwd=cwd)


def python_module(module: str, args: list[str], *, cwd: str | None = None) -> dict:
    """Run ``python -m module ARGS`` (``TQ_*`` variables removed) and return the JSON line it prints last."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TQ_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    proc = subprocess.run([sys.executable, "-m", module, *args], cwd=cwd or str(REPO_ROOT), env=env,
                          capture_output=True, text=True, timeout=TIMEOUT_S + 30)
    if proc.returncode != 0:
        raise RuntimeError(f"python -m {module} {args[0]} exited with {proc.returncode}:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _run(log: str, cmd: list[str]) -> dict:
    """In the wrapper: run ``cmd``; its exit code, wall time and own ``ru_maxrss`` (``os.wait4``)."""
    began = time.perf_counter()
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
        guard = threading.Timer(TIMEOUT_S, proc.kill)
        guard.start()
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        finally:
            guard.cancel()
        proc.returncode = os.waitstatus_to_exitcode(status)
    peak = usage.ru_maxrss // 1024 if sys.platform == "darwin" else usage.ru_maxrss  # bytes on macOS
    return {"exit": proc.returncode, "peak_rss_kib": peak, "wall_s": time.perf_counter() - began}


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        print("usage: python -m taskqueue.bench.peakrss LOG CMD...", file=sys.stderr)
        return 2
    print(json.dumps(_run(argv[0], argv[1:])))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
