#!/usr/bin/env bash
# One msrun per machine, shared by run_distribute_train.sh and run_distribute_eval.sh (source it, then call
# run_msrun_job SCRIPT DEVICE_TARGET DEVICE_NUM [CONFIG_PATH] [SCRIPT flags...]).
#
# DEVICE_NUM is the number of devices (workers) of this machine; the job has NODE_NUM x DEVICE_NUM ranks,
# rank = NODE_RANK x DEVICE_NUM + local index. Environment:
#   NODE_NUM     machines in the job (default 1); start the same command on each of them
#   NODE_RANK    this machine, 0 .. NODE_NUM-1 (default 0); machine 0 runs msrun's scheduler
#   MASTER_ADDR  address of machine 0, as the other machines reach it (default 127.0.0.1)
#   MASTER_PORT  scheduler port on machine 0 (default 8118)
#   LOG_DIR      this machine's per-rank logs worker_<rank>.log and msrun.log (default ./logs_distribute)
#   CLUSTER_TIME_OUT  seconds msrun waits for every machine to join (default 600)
#   RANK_TABLE_FILE   Ascend only, optional: passed to msrun as --rank_table_file
#   MSRUN        the msrun command (default msrun)
# When a rank dies or fails, every machine's launcher exits non-zero: a failing rank ends itself at once
# (model_utils.config.exit_rank), and MindSpore's scheduler ends the other ranks when its heartbeat stops,
# after MS_NODE_TIMEOUT seconds (MindSpore's default: 30). The launcher then names the failed ranks.

usage_and_exit() {
    echo "usage: bash $0 DEVICE_TARGET DEVICE_NUM [CONFIG_PATH] [extra $1 flags...]" >&2
    exit 2
}

positive_integer_or_exit() {
    if ! [[ "$2" =~ ^[1-9][0-9]*$ ]]; then
        echo "$1 must be a positive integer, got '$2'" >&2
        exit 2
    fi
}

report_failed_ranks() {
    # One line per rank log of this machine that reports a failure, and the scheduler's verdict.
    local log rank line found=1
    for log in "$LOG_DIR"/worker_*.log; do
        [ -f "$log" ] || continue
        line=$(grep -E "^error: " "$log" | tail -n 1 || true)
        if [ -z "$line" ] && grep -q "Traceback" "$log"; then
            line=$(grep -E "^[A-Za-z_.]*(Error|Exception)\b" "$log" | tail -n 1 || true)
            line=${line:-"traceback in $log"}
        fi
        [ -n "$line" ] || continue
        rank=${log##*worker_}
        echo "rank ${rank%.log} failed ($log): $line" >&2
        found=0
    done
    # Ranks that died without a word (killed, or a native crash): msrun names their pid and exit code,
    # and each rank's log names its pid (src/context.py).
    local pid code
    while read -r pid code; do
        log=$(grep -l -E "^rank [0-9]+ of [0-9]+: pid $pid\$" "$LOG_DIR"/worker_*.log 2>/dev/null | head -n 1 || true)
        rank="a rank"
        if [ -n "$log" ]; then
            rank=${log##*worker_}
            rank="rank ${rank%.log}"
        fi
        echo "$rank (pid $pid) exited with code $code${log:+ ($log)}" >&2
        found=0
    done < <(sed -n -E 's/.*Worker process ([0-9]+) exit with exception\. Error code: (-?[0-9]+).*/\1 \2/p' \
             "$LOG_DIR/msrun.log" 2>/dev/null)
    if [ -f "$LOG_DIR/scheduler.log" ]; then
        line=$(grep -o "Timed out node list is: [^}]*}" "$LOG_DIR/scheduler.log" | tail -n 1 || true)
        if [ -n "$line" ]; then
            line=${line##*\{}
            echo "scheduler: rank(s) ${line%\}} stopped responding (died, or hung past MS_NODE_TIMEOUT)" >&2
            found=0
        fi
    fi
    return $found
}

run_msrun_job() {
    local script=$1
    shift
    [ $# -ge 2 ] || usage_and_exit "$script"
    local root device_target=$1 device_num=$2
    root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
    shift 2
    case "$device_target" in CPU|GPU|Ascend) ;; *) echo "DEVICE_TARGET must be CPU, GPU or Ascend" >&2; exit 2;; esac
    positive_integer_or_exit DEVICE_NUM "$device_num"
    local node_num=${NODE_NUM:-1} node_rank=${NODE_RANK:-0}
    positive_integer_or_exit NODE_NUM "$node_num"
    if ! [[ "$node_rank" =~ ^[0-9]+$ ]] || [ "$node_rank" -ge "$node_num" ]; then
        echo "NODE_RANK must be in 0 .. $((node_num - 1)) (NODE_NUM=$node_num), got '$node_rank'" >&2
        exit 2
    fi
    local config_path=$root/default_config.yaml
    if [ $# -gt 0 ] && [[ "$1" != --* ]]; then
        config_path=$(realpath "$1")
        shift
    fi
    LOG_DIR=$(realpath -m "${LOG_DIR:-./logs_distribute}")
    local master_addr=${MASTER_ADDR:-127.0.0.1} master_port=${MASTER_PORT:-8118}
    local extra=()
    if [ "$device_target" = "Ascend" ] && [ -n "${RANK_TABLE_FILE:-}" ]; then
        extra+=(--rank_table_file "$(realpath "$RANK_TABLE_FILE")")
    fi
    mkdir -p "$LOG_DIR"
    echo "msrun: machine $node_rank of $node_num, $device_num worker(s) on $device_target" \
         "($((node_num * device_num)) in all), scheduler $master_addr:$master_port, logs in $LOG_DIR"
    # msrun starts the workers with its own interpreter: the project's .venv one unless MSRUN says otherwise.
    local msrun=${MSRUN:-}
    if [ -z "$msrun" ]; then
        source "$root/scripts/project_python.sh"
        msrun="$(dirname "$(project_python "$root")")/msrun"
        [ -x "$msrun" ] || msrun=msrun
    fi
    cd "$root"
    set +e
    "$msrun" --worker_num $((node_num * device_num)) --local_worker_num "$device_num" \
        --node_rank "$node_rank" --master_addr "$master_addr" --master_port "$master_port" \
        --cluster_time_out "${CLUSTER_TIME_OUT:-600}" --log_dir "$LOG_DIR" --join True "${extra[@]}" \
        "$script" --config_path "$config_path" --device_target "$device_target" "$@" 2>&1 | tee "$LOG_DIR/msrun.log"
    local status=${PIPESTATUS[0]}
    set -e
    if report_failed_ranks && [ "$status" -eq 0 ]; then
        status=1
    fi
    if [ "$status" -ne 0 ]; then
        echo "distributed $script failed on machine $node_rank (exit $status); see $LOG_DIR" >&2
        exit "$status"
    fi
    echo "distributed $script finished on machine $node_rank; logs in $LOG_DIR"
}
