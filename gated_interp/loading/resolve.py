"""From what a user types (`"gate_headwise"`, a folder) to a checkpoint folder on disk."""

from __future__ import annotations

import os
import re
from pathlib import Path

from gated_interp.loading.errors import CheckpointError, ReleaseNotAvailable

# The keys of config.VARIANT_GATES, repeated here so that the CLI needs no torch (tests/model/test_hooks_table.py).
VARIANTS = ("baseline", "gate_headwise", "gate_elementwise")
SIZES = ("1B", "tiny")
HUB_REPO = "QwQZh/gated_attention"
CHECKPOINTS_ENV = "GATED_INTERP_CHECKPOINTS"
BUNDLED_DIR = Path(__file__).resolve().parent.parent / "checkpoints"
# Only these are fetched from the hub: never the repository's Python files.
# A hub repository id, "owner/name" (read as one when no such local folder exists).
HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
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
    if HUB_ID.fullmatch(name):  # "Qwen/Qwen3.5-0.8B": no such folder here, so a hub repository
        return _from_hub_repo(name)
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
                f"{CHECKPOINTS_ENV}={mirror} but {folder} does not exist; download it there with "
                f'`{download_command(subfolder).replace("DIR", mirror)}`, or use the bundled tiny model (size="tiny")'
            )
        return folder
    return _from_hub(subfolder)


def download_command(subfolder: str) -> str:
    """The `hf download` command (of the installed huggingface_hub) that fetches one variant."""
    return f"hf download {HUB_REPO} --include '{subfolder}/*' --exclude '*.py' --local-dir DIR"


def _from_hub(subfolder: str) -> Path:
    from huggingface_hub import snapshot_download

    patterns = [f"{subfolder}/{pattern}" for pattern in HUB_PATTERNS]
    try:
        root = snapshot_download(HUB_REPO, allow_patterns=patterns)
    except Exception as error:  # offline, unreachable, not cached, rate-limited: one answer for all
        reason = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}".rstrip(": ")
        variant = subfolder.removeprefix("1B_")
        # from None: the hub client's chained tracebacks would bury the two ways out.
        raise ReleaseNotAvailable(variant, subfolder, reason, download_command(subfolder), CHECKPOINTS_ENV) from None
    folder = Path(root) / subfolder
    if not (folder / "config.json").is_file():
        raise CheckpointError(f"the hub snapshot at {root} has no {subfolder}/config.json")
    return folder


def _from_hub_repo(repo: str) -> Path:
    """A whole hub repository (e.g. "Qwen/Qwen3.5-0.8B"), its weights, configs and tokenizer only
    (never its Python files), from the hub cache or downloaded by huggingface_hub."""
    from huggingface_hub import snapshot_download

    try:
        folder = Path(snapshot_download(repo, allow_patterns=list(HUB_PATTERNS)))
    except Exception as error:  # offline, unreachable, not cached, no such repository: one answer for all
        reason = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}".rstrip(": ")
        raise CheckpointError(
            f"{repo!r} is not a local folder, and as a hub repository it is neither in the hub cache nor "
            f"downloadable ({reason}). Download it with `hf download {repo} --exclude '*.py' --local-dir DIR` "
            "and give DIR, or check the spelling"
        ) from None
    if not (folder / "config.json").is_file():
        raise CheckpointError(f"the hub snapshot of {repo} at {folder} has no config.json")
    return folder
