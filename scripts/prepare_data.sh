#!/usr/bin/env bash
# Convert the paper's data sets from local source files into verl parquet under $OUT_DIR (default: data/).
#
#   SRC=/path/to/sources OUT_DIR=data scripts/prepare_data.sh
#
# Expects these paths under $SRC (files or folders; see docs/DATA.md for where to get each). Missing ones are
# skipped with a note, so you can prepare only what you have.
#   MATH-lighteval/            MATH in the lighteval layout, with train and test splits
#   gsm8k/                     openai/gsm8k (main), with train and test splits
#   OpenR1-Math-220k/          open-r1/OpenR1-Math-220k, config default
#   MATH-500/                  HuggingFaceH4/MATH-500
#   aime24/ amc23/ minerva/ olympiadbench/   evaluation sets (parquet or jsonl)
# Set PYTHON to choose the interpreter (default: python). OpenR1: NUM_SAMPLES (40000) and SEED (0).
set -euo pipefail
if [[ "${1:-}" == "-h" || "${1:-}" == "--help" ]]; then  # usage: the comment block above
    awk 'NR > 1 { if (!/^#/) exit; sub(/^# ?/, ""); print }' "$0"; exit 0
fi

SRC=${SRC:?set SRC to the folder holding the source files}
OUT_DIR=${OUT_DIR:-data}
PYTHON=${PYTHON:-python}
NUM_SAMPLES=${NUM_SAMPLES:-40000}
SEED=${SEED:-0}

prepare() {  # name input [extra args...]
  local name=$1 input=$2
  shift 2
  if [[ ! -e "$input" ]]; then
    echo "skip $name: $input not found" >&2
    return 0
  fi
  "$PYTHON" -m aent.cli prepare-data "$name" --input "$input" --out-dir "$OUT_DIR" "$@"
}

prepare math_train    "$SRC/MATH-lighteval" --split train
prepare math_hard     "$SRC/MATH-lighteval" --split test
prepare gsm8k_train   "$SRC/gsm8k" --split train
prepare gsm8k_test    "$SRC/gsm8k" --split test
prepare openr1_40k    "$SRC/OpenR1-Math-220k" --num-samples "$NUM_SAMPLES" --seed "$SEED"
prepare math500       "$SRC/MATH-500"
prepare aime24        "$SRC/aime24"
prepare amc23         "$SRC/amc23"
prepare minerva       "$SRC/minerva"
prepare olympiadbench "$SRC/olympiadbench"
ls -l "$OUT_DIR"/*.parquet
