#!/usr/bin/env bash
# Create .venv if absent, install requirements.txt, run the whole test suite.
# Extra arguments go to pytest (e.g. ./run_tests.sh -k engine). Exit code 5 (no tests ran) is a failure.
set -euo pipefail
cd "$(dirname "$0")"
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --disable-pip-version-check -q -r requirements.txt
set +e
.venv/bin/python -m pytest -rA "$@"
status=$?
set -e
if [ "$status" -eq 5 ]; then
  echo "run_tests.sh: no tests were collected: failing" >&2
  exit 1
fi
exit "$status"
