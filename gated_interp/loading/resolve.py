"""From what a user types (`"gate_headwise"`, a folder) to a checkpoint folder on disk."""

from __future__ import annotations

import os
import re
from pathlib import Path

from gated_interp.loading.errors import CheckpointError, ReleaseNotAvailable

# The keys of config.VARIANT_GATES, repeated here so that the CLI needs no torch (tests/model/test_hooks_table.py).
VARIANTS = ("baseline", "gate_headwise", "gate_elementwise")
# The bundled pair in Qwen3.5's hybrid layout (train.trainer.HYBRID_VARIANT_GATES): tiny only, as no
# such release exists; the shipped Qwen3.5 / Qwen3-Next models load by hub id or folder.
HYBRID_VARIANTS = ("hybrid_gated", "hybrid_ungated")
SIZES = ("1B", "tiny")
# The folders of checkpoints/ that hold bundled models: the paper's three, the hybrid pair.
BUNDLES = ("tiny", "tiny_hybrid")
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
    if name in HYBRID_VARIANTS:
        if size != "tiny":
            raise CheckpointError(
                f'{name!r} exists only as a bundled tiny model: load_hooked("{name}", size="tiny"). '
                'For a released hybrid model give its hub id or folder, e.g. "Qwen/Qwen3.5-0.8B"'
            )
        return _bundled(name)
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
        f"unknown model {name!r}: give a variant name ({', '.join(VARIANTS + HYBRID_VARIANTS)}), a hub id or the "
        "path of a checkpoint folder"
    )


def bundle_of(variant: str) -> str:
    """The folder of `checkpoints/` that holds a bundled variant: `tiny` for the paper's three,
    `tiny_hybrid` for the Qwen3.5-layout pair (each bundle has its own card and measurements)."""
    if variant in HYBRID_VARIANTS:
        return "tiny_hybrid"
    if variant in VARIANTS:
        return "tiny"
    raise CheckpointError(
        f"no bundled model is called {variant!r}; choose from {', '.join(VARIANTS + HYBRID_VARIANTS)}"
    )


def _bundled(variant: str) -> Path:
    folder = BUNDLED_DIR / bundle_of(variant) / variant
    if not (folder / "config.json").is_file():
        layout = " --layout qwen3_5" if variant in HYBRID_VARIANTS else ""
        raise CheckpointError(
            f"the bundled tiny {variant} model is missing from {folder}; reinstall gated-interp, or "
            f"train it with `python -m gated_interp.train --corpus PATH{layout} --variants {variant}` and "
            "bundle it with `python -m maintainer.model_card` (from a clone)"
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
