#!/usr/bin/env bash
# Installs the runtime and test dependencies into .venv (created if missing) and runs the test suite.
# Usage: bash scripts/run_tests.sh [pytest args]
# TEST_WORKERS (default 2) pytest-xdist processes run whole test files side by side: most tests spend
# their time compiling graphs and launching small kernels, which keeps about one core busy.
# TEST_WORKERS=0 runs everything in this one process.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -r requirements.txt -r requirements-test.txt
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 GLOG_v=3
.venv/bin/python -m pytest -q --durations=25 -n "${TEST_WORKERS:-2}" --dist loadfile tests "$@"
