"""From what a user types (`"gate_headwise"`, a folder) to a checkpoint folder on disk."""

from __future__ import annotations

import os
from pathlib import Path

from gated_interp.loading.errors import CheckpointError

VARIANTS = ("baseline", "gate_headwise", "gate_elementwise")
SIZES = ("1B", "tiny")
HUB_REPO = "QwQZh/gated_attention"
CHECKPOINTS_ENV = "GATED_INTERP_CHECKPOINTS"
BUNDLED_DIR = Path(__file__).resolve().parent.parent / "checkpoints"
# Only these are fetched from the hub: never the repository's Python files.
HUB_PATTERNS = ("*.json", "*.safetensors", "*.bin", "*.txt", "*.model", "*.tiktoken")


def resolve_checkpoint(name_or_path: str | os.PathLike, size: str = "1B") -> Path:
    """A folder for a variant name (bundled, local mirror or hub) or an existing path."""
    if size not in SIZES:
        raise CheckpointError(f"size must be one of {SIZES}, got {size!r}")
    name = str(name_or_path)
    if name in VARIANTS:
        if size == "tiny":
            return _bundled(name)
        return _released(name)
    path = Path(name).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise CheckpointError(f"{path} is a file; give the checkpoint folder that holds config.json")
    if os.sep in name or name.startswith("."):
        raise CheckpointError(f"checkpoint folder {path} does not exist")
    raise CheckpointError(
        f"unknown model {name!r}: give a variant name ({', '.join(VARIANTS)}) or the path of a checkpoint folder"
    )


def _bundled(variant: str) -> Path:
    folder = BUNDLED_DIR / "tiny" / variant
    if not (folder / "config.json").is_file():
        raise CheckpointError(
            f"the bundled tiny {variant} model is missing from {folder}; reinstall gated-interp, or "
            "train it with `python -m gated_interp.train --corpus PATH --out "
            f"{BUNDLED_DIR / 'tiny'}`"
        )
    return folder


def _released(variant: str) -> Path:
    subfolder = f"1B_{variant}"
    mirror = os.environ.get(CHECKPOINTS_ENV)
    if mirror:
        folder = Path(mirror).expanduser() / subfolder
        if not folder.is_dir():
            raise CheckpointError(
                f"{CHECKPOINTS_ENV}={mirror} but {folder} does not exist; download the folder "
                f"{subfolder} of the hub repository {HUB_REPO} there"
            )
        return folder
    return _from_hub(subfolder)


def _from_hub(subfolder: str) -> Path:
    from huggingface_hub import snapshot_download

    patterns = [f"{subfolder}/{pattern}" for pattern in HUB_PATTERNS]
    try:
        root = snapshot_download(HUB_REPO, allow_patterns=patterns)
    except Exception as error:  # offline, unreachable, not cached, rate-limited: one answer for all
        raise CheckpointError(
            f"could not fetch {HUB_REPO}/{subfolder} from the Hugging Face hub, and it is not in the "
            f"hub cache ({type(error).__name__}: {error}). On a machine with access, download it "
            f"once, e.g. `huggingface-cli download {HUB_REPO} --include '{subfolder}/*' "
            f"--exclude '*.py' --local-dir DIR`, then set {CHECKPOINTS_ENV}=DIR or pass "
            f"DIR/{subfolder} to load_hooked"
        ) from error
    folder = Path(root) / subfolder
    if not (folder / "config.json").is_file():
        raise CheckpointError(f"the hub snapshot at {root} has no {subfolder}/config.json")
    return folder
