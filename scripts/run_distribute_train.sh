#!/usr/bin/env bash
# Data-parallel training with msrun on Ascend, GPU or CPU.
# Usage: bash scripts/run_distribute_train.sh DEVICE_TARGET DEVICE_NUM [CONFIG_PATH] [extra train.py flags...]
# Environment: LOG_DIR (per-rank logs, default ./logs_distribute), MASTER_PORT (default 8118),
#              RANK_TABLE_FILE (Ascend only, optional: passed to msrun as --rank_table_file).
# Exits non-zero when any rank fails.
set -euo pipefail
if [ $# -lt 2 ]; then
    echo "usage: bash $0 DEVICE_TARGET DEVICE_NUM [CONFIG_PATH] [extra train.py flags...]" >&2
    exit 2
fi
ROOT=$(cd "$(dirname "$0")/.." && pwd)
DEVICE_TARGET=$1
DEVICE_NUM=$2
shift 2
case "$DEVICE_TARGET" in CPU|GPU|Ascend) ;; *) echo "DEVICE_TARGET must be CPU, GPU or Ascend" >&2; exit 2;; esac
if ! [[ "$DEVICE_NUM" =~ ^[1-9][0-9]*$ ]]; then
    echo "DEVICE_NUM must be a positive integer, got '$DEVICE_NUM'" >&2
    exit 2
fi
CONFIG_PATH=$ROOT/default_config.yaml
if [ $# -gt 0 ] && [[ "$1" != --* ]]; then
    CONFIG_PATH=$(realpath "$1")
    shift
fi
LOG_DIR=$(realpath -m "${LOG_DIR:-./logs_distribute}")
MASTER_PORT=${MASTER_PORT:-8118}
MSRUN=${MSRUN:-msrun}
mkdir -p "$LOG_DIR"
EXTRA=()
if [ "$DEVICE_TARGET" = "Ascend" ] && [ -n "${RANK_TABLE_FILE:-}" ]; then
    EXTRA+=(--rank_table_file "$(realpath "$RANK_TABLE_FILE")")
fi
echo "msrun: $DEVICE_NUM worker(s) on $DEVICE_TARGET, per-rank logs in $LOG_DIR"
cd "$ROOT"
set +e
"$MSRUN" --worker_num "$DEVICE_NUM" --local_worker_num "$DEVICE_NUM" --master_port "$MASTER_PORT" \
    --log_dir "$LOG_DIR" --join True "${EXTRA[@]}" \
    train.py --config_path "$CONFIG_PATH" --device_target "$DEVICE_TARGET" "$@"
STATUS=$?
set -e
for LOG in "$LOG_DIR"/worker_*.log; do
    [ -f "$LOG" ] || continue
    if grep -q -E "^error:|Traceback" "$LOG"; then
        echo "rank log $LOG reports a failure:" >&2
        tail -n 20 "$LOG" >&2
        if [ "$STATUS" -eq 0 ]; then STATUS=1; fi
    fi
done
if [ "$STATUS" -ne 0 ]; then
    echo "distributed training failed (exit $STATUS); see $LOG_DIR" >&2
    exit "$STATUS"
fi
echo "distributed training finished; logs in $LOG_DIR"
