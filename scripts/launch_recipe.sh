#!/usr/bin/env bash
# Launch one of the recipes in configs/ with verl's own entry point (python -m verl.trainer.main_ppo).
#
#   scripts/launch_recipe.sh RECIPE [MODEL_PATH [DATA_DIR [N_GPUS [RUN_NAME]]]] [-- hydra overrides ...]
#
# Every positional argument may instead come from the environment: MODEL_PATH, DATA_DIR, N_GPUS (GPUs per node),
# RUN_NAME. NNODES (default 1) sets trainer.nnodes; CKPT_DIR (default checkpoints/<RUN_NAME>) the checkpoint folder.
# Anything after "--" goes to Hydra unchanged, e.g. -- aent.clamp_p=0.25 trainer.logger='["console","wandb"]'.
#
# Multi-node: start a Ray cluster first (on the head: `ray start --head --port=6379`; on every other node:
# `ray start --address=<head-ip>:6379`), then run this script on the head node with NNODES=<nodes>. verl's
# run_ppo connects to the running cluster (ray.init) and places trainer.nnodes x trainer.n_gpus_per_node workers.
set -euo pipefail

usage() { awk 'NR > 1 { if (!/^#/) exit; sub(/^# ?/, ""); print }' "$0"; exit "${1:-2}"; }  # the comment block above
[[ $# -ge 1 ]] || usage
[[ "$1" == "-h" || "$1" == "--help" ]] && usage 0
RECIPE="$1"; shift
positional=()
while [[ $# -gt 0 && "$1" != "--" ]]; do positional+=("$1"); shift; done
[[ $# -gt 0 && "$1" == "--" ]] && shift

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
[[ -f "$REPO_ROOT/configs/$RECIPE.yaml" ]] || { echo "unknown recipe '$RECIPE' (see $REPO_ROOT/configs)" >&2; exit 2; }

MODEL_PATH="${positional[0]:-${MODEL_PATH:-}}"
DATA_DIR="${positional[1]:-${DATA_DIR:-}}"
N_GPUS="${positional[2]:-${N_GPUS:-8}}"
RUN_NAME="${positional[3]:-${RUN_NAME:-$RECIPE}}"
NNODES="${NNODES:-1}"
CKPT_DIR="${CKPT_DIR:-checkpoints/$RUN_NAME}"

[[ -n "$MODEL_PATH" ]] || { echo "MODEL_PATH is required (first argument of run_*.sh, or the environment)" >&2; exit 2; }
[[ -n "$DATA_DIR" ]] || { echo "DATA_DIR is required (second argument of run_*.sh, or the environment; made by 'aent prepare-data')" >&2; exit 2; }
[[ -d "$DATA_DIR" ]] || { echo "DATA_DIR '$DATA_DIR' is not a directory" >&2; exit 2; }
[[ "$N_GPUS" =~ ^[0-9]+$ && "$N_GPUS" -ge 1 ]] || { echo "N_GPUS must be a positive integer, got '$N_GPUS'" >&2; exit 2; }
[[ "$NNODES" =~ ^[0-9]+$ && "$NNODES" -ge 1 ]] || { echo "NNODES must be a positive integer, got '$NNODES'" >&2; exit 2; }

export AENT_DATA_DIR="$(cd "$DATA_DIR" && pwd)"
export AENT_MODEL_PATH="$MODEL_PATH"

cmd=("${PYTHON:-python}" -m verl.trainer.main_ppo
  --config-path="$REPO_ROOT/configs" --config-name="$RECIPE"
  actor_rollout_ref.model.path="$MODEL_PATH"
  trainer.n_gpus_per_node="$N_GPUS" trainer.nnodes="$NNODES"
  trainer.experiment_name="$RUN_NAME" trainer.default_local_dir="$CKPT_DIR"
  # the recipes read ${oc.env:AENT_DATA_DIR} where verl resolves the config: inside a Ray actor
  ++ray_kwargs.ray_init.runtime_env.env_vars.AENT_DATA_DIR="$AENT_DATA_DIR"
  "$@")
echo "${cmd[*]}"
[[ "${DRY_RUN:-0}" == "1" ]] && exit 0
exec "${cmd[@]}"
