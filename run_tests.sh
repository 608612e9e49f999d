#!/usr/bin/env bash
# Create the venv if absent, install requirements.txt, run the whole test suite.
# Extra arguments go to pytest (e.g. ./run_tests.sh -k engine). Exit code 5 (no tests ran) is a failure.
# PYTHON picks the interpreter that creates the venv (default python3), VENV its directory (default .venv):
#   PYTHON=python3.12 VENV=.venv-3.12 ./run_tests.sh      (what .ci/run does for each other version)
set -euo pipefail
cd "$(dirname "$0")"
PYTHON="${PYTHON:-python3}"
VENV="${VENV:-.venv}"
if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install --disable-pip-version-check -q -r requirements.txt
set +e
"$VENV/bin/python" -m pytest -rA "$@"
status=$?
set -e
if [ "$status" -eq 5 ]; then
  echo "run_tests.sh: no tests were collected: failing" >&2
  exit 1
fi
exit "$status"
