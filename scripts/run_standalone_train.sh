#!/usr/bin/env bash
# One-device training.
# Usage: bash scripts/run_standalone_train.sh DEVICE_TARGET [CONFIG_PATH] [extra train.py flags...]
# Example: bash scripts/run_standalone_train.sh GPU default_config.yaml --mindrecord_dir data/mindrecord --output_dir output
set -euo pipefail
if [ $# -lt 1 ]; then
    echo "usage: bash $0 DEVICE_TARGET [CONFIG_PATH] [extra train.py flags...]" >&2
    exit 2
fi
ROOT=$(cd "$(dirname "$0")/.." && pwd)
DEVICE_TARGET=$1
shift
CONFIG_PATH=$ROOT/default_config.yaml
if [ $# -gt 0 ] && [[ "$1" != --* ]]; then
    CONFIG_PATH=$(realpath "$1")
    shift
fi
source "$ROOT/scripts/project_python.sh"
PYTHON=$(project_python "$ROOT")
cd "$ROOT"
"$PYTHON" train.py --config_path "$CONFIG_PATH" --device_target "$DEVICE_TARGET" "$@"
