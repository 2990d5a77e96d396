#!/usr/bin/env bash
# Data-parallel training with msrun on Ascend, GPU or CPU, on one machine or several.
# Usage: bash scripts/run_distribute_train.sh DEVICE_TARGET DEVICE_NUM [CONFIG_PATH] [extra train.py flags...]
# DEVICE_NUM: devices of this machine. Several machines: NODE_NUM, NODE_RANK, MASTER_ADDR (see msrun_job.sh).
# Exits non-zero when any rank fails.
set -euo pipefail
source "$(dirname "$0")/msrun_job.sh"
run_msrun_job train.py "$@"
