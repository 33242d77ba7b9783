#!/usr/bin/env bash
# Re-execute the four notebooks in place (outputs and figures are committed with them).
#   notebooks/run_all.sh              # bundled tiny models (default)
#   notebooks/run_all.sh -p SIZE 1B   # released checkpoints (extra arguments go to papermill)
# PYTHON defaults to the python on PATH (activate the project's environment first).
set -euo pipefail
cd "$(dirname "$0")"
PYTHON="${PYTHON:-python}"
for notebook in 01_quickstart 02_attention_sinks 03_gate_sparsity 04_patching; do
    start=$(date +%s)
    "$PYTHON" -m papermill "$notebook.ipynb" "$notebook.ipynb" -k python3 --cwd . --log-level WARNING --no-progress-bar "$@"
    echo "$notebook: $(( $(date +%s) - start )) s"
done
