#!/usr/bin/env bash
# Source it: project_python ROOT prints the interpreter the scripts run: $PYTHON when set, else the project's
# .venv/bin/python when it exists, else python3 from PATH; it exits with one line when that interpreter has
# no MindSpore (the usual cause: the .venv of README's set-up was not created, or another python is first).
project_python() {
    local root=$1 python
    if [ -n "${PYTHON:-}" ]; then
        python=$PYTHON
    elif [ -x "$root/.venv/bin/python" ]; then
        python=$root/.venv/bin/python
    else
        python=$(command -v python3 || command -v python || true)
    fi
    if [ -z "$python" ] || ! "$python" -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('mindspore') is None)" 2>/dev/null; then
        echo "error: ${python:-no python} has no MindSpore: create the project's environment with" \
             "'python3.11 -m venv $root/.venv && $root/.venv/bin/pip install -r $root/requirements.txt'" \
             "(README, Set-up), or set PYTHON to an interpreter that has it" >&2
        exit 1
    fi
    echo "$python"
}
