#!/usr/bin/env bash
# Quick start on the built-in synthetic referring set with the tiny model, on CPU:
# creates .venv if needed, writes the data, converts it to MindRecord, trains, evaluates, exports MINDIR,
# writes a prediction PNG and a contact sheet of the first 8 val refs with their IoUs.
# Usage: bash scripts/run_quickstart.sh [WORK_DIR]   (default: ./quickstart)
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
WORK=$(realpath -m "${1:-./quickstart}")
CONFIG=$ROOT/tiny_config.yaml
START=$(date +%s)
if [ ! -x .venv/bin/python ]; then
    echo "== creating .venv and installing requirements.txt"
    "${PYTHON:-python3}" -m venv .venv
    .venv/bin/python -m pip install --quiet --upgrade pip
fi
.venv/bin/python -m pip install --quiet -r requirements.txt
PY=$ROOT/.venv/bin/python
export GLOG_v=3
DATA=$WORK/data
RECORDS=$WORK/mindrecord
OUT=$WORK/output
COMMON=(--config_path "$CONFIG" --mindrecord_dir "$RECORDS" --vocab_file "$DATA/vocab.txt")
# Each step is announced with the seconds spent so far (installation included), to show where the time goes.
step() { echo "== $1  [$(( $(date +%s) - START )) s]"; }

step "1/7 writing the synthetic referring set to $DATA"
"$PY" -m src.data.synthetic --out "$DATA" --images 2000
step "2/7 converting it to MindRecord in $RECORDS"
"$PY" -m src.data.build_mindrecord "${COMMON[@]}" --refer_data_root "$DATA" --image_root "$DATA/images" \
    --dataset refcoco --split_by unc
step "3/7 training the tiny model (checkpoints in $OUT)"
"$PY" train.py "${COMMON[@]}" --output_dir "$OUT"
step "4/7 evaluating $OUT/best.ckpt on val, testA, testB"
"$PY" eval.py "${COMMON[@]}" --ckpt_path "$OUT/best.ckpt" --eval_splits val,testA,testB \
    --result_json "$OUT/eval_results.json"
step "5/7 exporting MINDIR"
"$PY" export.py "${COMMON[@]}" --ckpt_path "$OUT/best.ckpt" --file_name "$OUT/coupalign_tiny" --file_format MINDIR
step "6/7 predicting one validation sentence"
read -r IMAGE SENTENCE < <("$PY" -m src.data.synthetic --out "$DATA" --print_example val)
"$PY" predict.py "${COMMON[@]}" --ckpt_path "$OUT/best.ckpt" --image "$IMAGE" --sentence "$SENTENCE" \
    --output "$OUT/prediction.png"
step "7/7 contact sheet of the first 8 validation refs (in val order, not chosen by score)"
"$PY" -m src.tools.contact_sheet "${COMMON[@]}" --ckpt_path "$OUT/best.ckpt" --eval_split val --num_examples 8 \
    --output "$OUT/quickstart_contact_sheet.png"
echo
echo "quick start finished in $(( $(date +%s) - START )) s"
echo "  data:        $DATA"
echo "  mindrecord:  $RECORDS"
echo "  checkpoints: $OUT/last.ckpt, $OUT/best.ckpt (log: $OUT/train_log.jsonl)"
echo "  metrics:     $OUT/eval_results.json"
echo "  MINDIR:      $OUT/coupalign_tiny.mindir"
echo "  prediction:  $OUT/prediction.png  (\"$SENTENCE\" on $IMAGE)"
echo "  contact sheet: $OUT/quickstart_contact_sheet.png  (the first 8 val refs with sentence and IoU)"
