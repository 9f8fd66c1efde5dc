#!/usr/bin/env bash
# Recipe configs/skywork_math.yaml. Usage: scripts/run_skywork_math.sh [MODEL_PATH [DATA_DIR [N_GPUS [RUN_NAME]]]] [-- overrides]
# (or MODEL_PATH, DATA_DIR, N_GPUS, RUN_NAME, NNODES in the environment; see scripts/launch_recipe.sh).
if [[ "${1:-}" == "-h" || "${1:-}" == "--help" ]]; then  # usage: the comment block above
    awk 'NR > 1 { if (!/^#/) exit; sub(/^# ?/, ""); print }' "$0"; exit 0
fi
exec "$(dirname "${BASH_SOURCE[0]}")/launch_recipe.sh" skywork_math "$@"
