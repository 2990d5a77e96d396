#!/usr/bin/env bash
# Evaluation sharded over devices with msrun: each rank evaluates its share of every split, rank 0 writes the
# same table, --result_json and --per_sample_json as one device would.
# Usage: bash scripts/run_distribute_eval.sh DEVICE_TARGET DEVICE_NUM [CONFIG_PATH] [extra eval.py flags...]
# Example: bash scripts/run_distribute_eval.sh GPU 8 default_config.yaml --ckpt_path output/best.ckpt --eval_splits all
# DEVICE_NUM: devices of this machine. Several machines: NODE_NUM, NODE_RANK, MASTER_ADDR (see msrun_job.sh).
set -euo pipefail
source "$(dirname "$0")/msrun_job.sh"
run_msrun_job eval.py "$@"
