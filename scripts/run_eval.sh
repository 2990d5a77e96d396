#!/usr/bin/env bash
# Evaluation of a checkpoint on one or several splits.
# Usage: bash scripts/run_eval.sh DEVICE_TARGET CKPT_PATH [CONFIG_PATH] [extra eval.py flags...]
# Example: bash scripts/run_eval.sh GPU output/best.ckpt default_config.yaml --mindrecord_dir data/mindrecord --eval_splits all
set -euo pipefail
if [ $# -lt 2 ]; then
    echo "usage: bash $0 DEVICE_TARGET CKPT_PATH [CONFIG_PATH] [extra eval.py flags...]" >&2
    exit 2
fi
ROOT=$(cd "$(dirname "$0")/.." && pwd)
DEVICE_TARGET=$1
CKPT_PATH=$(realpath "$2")
shift 2
CONFIG_PATH=$ROOT/default_config.yaml
if [ $# -gt 0 ] && [[ "$1" != --* ]]; then
    CONFIG_PATH=$(realpath "$1")
    shift
fi
source "$ROOT/scripts/project_python.sh"
PYTHON=$(project_python "$ROOT")
cd "$ROOT"
"$PYTHON" eval.py --config_path "$CONFIG_PATH" --device_target "$DEVICE_TARGET" --ckpt_path "$CKPT_PATH" "$@"
