#!/usr/bin/env bash
# Re-execute the five notebooks in place (outputs and figures are committed with them).
#   notebooks/run_all.sh              # bundled tiny models (default)
#   notebooks/run_all.sh -p SIZE 1B   # released checkpoints (extra arguments go to papermill)
# PYTHON defaults to the python on PATH (activate the project's environment first).
set -euo pipefail
cd "$(dirname "$0")"
PYTHON="${PYTHON:-python}"
for notebook in 01_quickstart 02_attention_sinks 03_gate_sparsity 04_patching 05_gated_attention_as_it_ships; do
    start=$(date +%s)
    "$PYTHON" -m papermill "$notebook.ipynb" "$notebook.ipynb" -k python3 --cwd . --log-level WARNING --no-progress-bar "$@"
    # Progress widgets (TransformerLens' sweep draws one) cannot render from a saved notebook: their
    # stored text is the bar's first frame ("0/16"). Drop them.
    "$PYTHON" - "$notebook.ipynb" <<'PY'
import sys, nbformat
path = sys.argv[1]
nb = nbformat.read(path, as_version=4)
for cell in nb.cells:
    if cell.cell_type == "code":
        cell.outputs = [o for o in cell.outputs if "application/vnd.jupyter.widget-view+json" not in o.get("data", {})]
nb.metadata.pop("widgets", None)
nbformat.write(nb, path)
PY
    echo "$notebook: $(( $(date +%s) - start )) s"
done
