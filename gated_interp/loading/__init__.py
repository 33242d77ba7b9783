"""Reading and writing checkpoints in the authors' released Hugging Face format.

config.json → `hf_config`; q_proj's per-group query/gate layout → `qproj_layout`; tensor files →
`weight_files`; HF names ↔ our parameters → `state_dict`; names and hub → `resolve`;
putting it together → `load` and `save`.
"""

from gated_interp.loading import bundled
from gated_interp.loading.errors import CheckpointError
from gated_interp.loading.load import load_hooked
from gated_interp.loading.save import save_hf

__all__ = ["CheckpointError", "bundled", "load_hooked", "save_hf"]
