"""`load_hooked`: a checkpoint folder (or variant name) → `HookedGatedQwen3`.

Every name, shape and dtype (floating point only) is checked against the config before a single
weight is copied; weights are then copied one tensor at a time into an uninitialised model, in the
requested dtype, and tensors holding NaN or Inf are named in a `NonFiniteWeightsWarning`.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from gated_interp._progress import progress_bar
from gated_interp.config import GatedQwen3Config
from gated_interp.loading import hybrid
from gated_interp.loading.device_map import DeviceMapSpec
from gated_interp.loading.errors import CheckpointError, NonFiniteWeightsWarning
from gated_interp.loading.hf_config import config_from_hf, read_config_json
from gated_interp.loading.resolve import resolve_checkpoint
from gated_interp.loading.state_dict import IGNORED_SUFFIXES, by_hf_name, expected_hf_shapes, hf_to_ours
from gated_interp.loading.weight_files import WeightFiles
from gated_interp.model import HookedGatedQwen3
from gated_interp.weight_processing import (
    CENTER_WRITING_WEIGHTS_UNSUPPORTED,
    REFACTOR_UNSUPPORTED,
    refuse_gated_value_bias_fold,
)

logger = logging.getLogger(__name__)
# Checkpoints smaller than this load in a second or two: no bar, even on a terminal.
LONG_LOAD_BYTES = 256 * 2**20
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json")


def load_hooked(
    name_or_path: str | os.PathLike,
    *,
    size: str = "1B",
    device: str | None = None,
    dtype: torch.dtype | None = None,
    progress: bool | None = None,
    fold_ln: bool = True,
    center_unembed: bool = False,
    fold_value_biases: bool = False,
    center_writing_weights: bool = False,
    refactor_factored_attn_matrices: bool = False,
    device_map: DeviceMapSpec | None = None,
    max_memory: dict[Any, Any] | None = None,
    offload_folder: str | os.PathLike | None = None,
) -> HookedGatedQwen3:
    """Load a released-format checkpoint as a hooked model.

    `name_or_path` is a variant (`"baseline"`, `"gate_headwise"`, `"gate_elementwise"`), resolved
    to the bundled models with `size="tiny"`, else to `$GATED_INTERP_CHECKPOINTS/1B_<variant>` or the
    hub (`QwQZh/gated_attention`); or the path of a checkpoint folder. `dtype` defaults to float32,
    so that analyses run at full precision whatever the dtype on disk.

    As TransformerLens' `from_pretrained`, the RMSNorm weights are folded into the weights that
    read them (`fold_ln=True`, see `HookedGatedQwen3.process_weights_`): same function, but
    `W_U` carries `ln_final.w`, so `cache.decompose_resid(apply_ln=True) @ W_U[:, t]` is a logit.
    `fold_ln=False` keeps the checkpoint's weights as they are on disk. `center_unembed=True`
    centres `W_U` over the vocabulary as TransformerLens' default does (logits then differ from
    the released model's by a constant per position); it is off so that logits stay the model's.
    `progress`: None (default) draws a loading bar only on a terminal and only for checkpoints of
    256 MiB or more; True always, False never. `fold_value_biases` (ungated models only) moves `b_V` into `b_O`;
    TransformerLens' `center_writing_weights` and `refactor_factored_attn_matrices` cannot hold on
    this architecture and raise, saying why, before anything is read.

    Models bigger than one device: `device_map` ("auto", "balanced", "balanced_low_0",
    "sequential", a device, "disk", or a dict from module name to device), `max_memory` (device →
    bytes or "20GiB") and `offload_folder` mean what they mean in transformers' `from_pretrained`
    (see `gated_interp.loading.device_map`). The model is built on the meta device, each block is
    placed whole, and the weights go from the checkpoint to their device one block at a time
    (`gated_interp.loading.dispatch`). `plan_device_map` shows the map before anything is loaded.
    """
    if device_map is not None and device is not None:
        raise ValueError("pass either device or device_map: a device_map says where every part goes")
    if device_map is None and (max_memory is not None or offload_folder is not None):
        raise ValueError("max_memory and offload_folder apply with a device_map: pass device_map='auto'")
    if device_map is not None and fold_value_biases:
        raise ValueError("fold_value_biases is not available with a device_map; load without one to fold them")
    folder = resolve_checkpoint(name_or_path, size)
    return load_folder(
        folder,
        device=device,
        dtype=dtype or torch.float32,
        progress=progress,
        fold_ln=fold_ln,
        center_unembed=center_unembed,
        fold_value_biases=fold_value_biases,
        center_writing_weights=center_writing_weights,
        refactor_factored_attn_matrices=refactor_factored_attn_matrices,
        dispatch=None
        if device_map is None
        else dict(device_map=device_map, max_memory=max_memory, offload_folder=offload_folder),
    )


def load_folder(
    folder: Path,
    *,
    device: str | None = None,
    dtype: torch.dtype = torch.float32,
    progress: bool | None = None,
    fold_ln: bool = True,
    center_unembed: bool = False,
    fold_value_biases: bool = False,
    center_writing_weights: bool = False,
    refactor_factored_attn_matrices: bool = False,
    dispatch: dict[str, Any] | None = None,
) -> HookedGatedQwen3:
    # TransformerLens' options that cannot hold here fail before a byte of weights is read.
    if center_writing_weights:
        raise ValueError(CENTER_WRITING_WEIGHTS_UNSUPPORTED)
    if refactor_factored_attn_matrices:
        raise ValueError(REFACTOR_UNSUPPORTED)
    hf = read_config_json(folder)
    if hf.get("model_type") in hybrid.FAMILIES:
        model = load_hybrid_folder(
            folder, hf, device=device, dtype=dtype, progress=progress, dispatch=dispatch,
            fold_ln=fold_ln, center_unembed=center_unembed,
        )  # fmt: skip
        if dispatch is not None:
            return model
        if fold_ln or center_unembed or fold_value_biases:
            model.process_weights_(fold_ln=fold_ln, center_unembed=center_unembed, fold_value_biases=fold_value_biases)
        return model.eval()
    files = WeightFiles(folder)
    names = {n for n in files.names() if not n.endswith(IGNORED_SUFFIXES)}
    cfg = config_from_hf(
        hf,
        tie_word_embeddings_default="lm_head.weight" not in names,
        dtype=dtype,
        device=device,
        model_name=folder.name,
    )
    if cfg.tie_word_embeddings and "lm_head.weight" in names:
        check_tied_copy(files, folder)  # some tied checkpoints still store a copy: it must be one
        names.discard("lm_head.weight")
    if fold_value_biases:
        refuse_gated_value_bias_fold(cfg)
    check_tensors(names, files, cfg, folder)
    files.check_float(names)
    table = by_hf_name(cfg)

    def convert(name: str, tensor: torch.Tensor) -> Any:
        return ((our_name, None, part) for our_name, part in hf_to_ours(name, tensor, cfg, table))

    if dispatch is not None:
        return _dispatched(folder, cfg, files, names, convert, progress, fold_ln, center_unembed, dispatch)
    model = _load_whole(folder, cfg, files, names, convert, progress)
    if fold_ln or center_unembed or fold_value_biases:
        model.process_weights_(fold_ln=fold_ln, center_unembed=center_unembed, fold_value_biases=fold_value_biases)
    # Eval mode, as Hugging Face's from_pretrained returns: transformer_lens.patching refuses
    # models in training mode.
    return model.eval()


def load_hybrid_folder(
    folder: Path,
    hf: dict[str, Any],
    *,
    device: str | None,
    dtype: torch.dtype,
    progress: bool | None,
    dispatch: dict[str, Any] | None = None,
    fold_ln: bool = False,
    center_unembed: bool = False,
) -> HookedGatedQwen3:
    """A Qwen3.5 / Qwen3-Next folder (`gated_interp.loading.hybrid`), unprocessed: the same checks
    as the paper's folders (every name and shape before any copy, floating point, non-finite
    values named), with the vision tower and multi-token-prediction head read past."""
    files = WeightFiles(folder)
    all_names = files.names()
    if any(name.startswith(hybrid.VISION_PREFIX) for name in all_names) or hybrid.FAMILIES[hf["model_type"]].vision:
        logger.warning("%s: loading the language model only; the vision tower (model.visual.*) is left out", folder)
    names = {n for n in all_names if not hybrid.ignored(n) and not n.endswith(IGNORED_SUFFIXES)}
    cfg = hybrid.config_from_hybrid_hf(
        hf,
        tie_word_embeddings_default="lm_head.weight" not in names,
        dtype=dtype,
        device=device,
        model_name=folder.name,
    )
    hybrid.note_expert_layout(cfg, names)  # per-expert or fused tensors: expected_shapes follows
    if cfg.tie_word_embeddings and "lm_head.weight" in names:
        check_tied_copy(files, folder, embed_name=f"{hybrid.family_of(cfg).prefix}embed_tokens.weight")
        names.discard("lm_head.weight")
    described = f"config.json ({hf['model_type']}): check that config.json matches the weights"
    check_names_and_shapes(names, hybrid.expected_shapes(cfg), files, folder, described)
    files.check_float(names)
    table = hybrid.by_hf_name(cfg)
    if dispatch is not None and cfg.gate == "none":
        raise CheckpointError(
            f"{folder}: an ungated model ({hybrid.UNGATED_KEY}: false) cannot be loaded with a device_map; "
            "load it whole (these are small trained models)"
        )

    def convert(name: str, tensor: torch.Tensor) -> Any:
        return ((our_name, expert, rearrange(tensor)) for our_name, expert, rearrange in table[name])

    if dispatch is not None:  # processed while loading (fold_ln, center_unembed), one block at a time
        return _dispatched(folder, cfg, files, names, convert, progress, fold_ln, center_unembed, dispatch)
    return _load_whole(folder, cfg, files, names, convert, progress)


def _load_whole(
    folder: Path, cfg: GatedQwen3Config, files: WeightFiles, names: set[str], convert: Any, progress: bool | None
) -> HookedGatedQwen3:
    """The model on one device, unprocessed: each stored tensor read once, named when not finite,
    and copied into the parameters `convert(name, tensor)` yields as `(our name, expert index or
    None, value)`; a None name is a value that was checked but is not kept (an ungated hybrid's
    zero gate rows)."""
    model = HookedGatedQwen3(cfg, tokenizer=_checked_tokenizer(folder, cfg))
    params = dict(model.named_parameters())
    non_finite = []
    with torch.no_grad():
        for name in _loading_bar(sorted(names), files, folder, progress):
            tensor = files.get(name)
            if not bool(torch.isfinite(tensor).all()):
                non_finite.append(name)
            for our_name, expert, value in convert(name, tensor):
                if our_name is not None:
                    (params[our_name] if expert is None else params[our_name][expert]).copy_(value)
    if non_finite:
        warn_non_finite(folder, non_finite)
    return model


def _dispatched(
    folder: Path,
    cfg: GatedQwen3Config,
    files: WeightFiles,
    names: set[str],
    convert: Any,
    progress: bool | None,
    fold_ln: bool,
    center_unembed: bool,
    dispatch: dict[str, Any],
) -> HookedGatedQwen3:
    """The checked folder loaded across devices (`gated_interp.loading.dispatch`)."""
    from gated_interp.loading.dispatch import load_dispatched

    non_finite: list[str] = []

    def seen(name: str, tensor: torch.Tensor) -> None:
        if not bool(torch.isfinite(tensor).all()):
            non_finite.append(name)

    model = load_dispatched(
        cfg, _checked_tokenizer(folder, cfg), names, files.get, convert, **dispatch,
        fold_ln=fold_ln, center_unembed=center_unembed,
        progress_names=lambda ordered: _loading_bar(ordered, files, folder, progress), on_tensor=seen,
    )  # fmt: skip
    if non_finite:
        warn_non_finite(folder, non_finite)
    return model


def _checked_tokenizer(folder: Path, cfg: Any) -> Any:
    """The folder's tokenizer (None without tokenizer files), refused when it has more tokens than
    the embedding: those ids would fail at the first string prompt, far from the cause."""
    tokenizer = load_tokenizer(folder)
    if tokenizer is not None and len(tokenizer) > cfg.d_vocab:
        raise CheckpointError(
            f"{folder}: the tokenizer has {len(tokenizer)} tokens but config.json's vocab_size is {cfg.d_vocab}: "
            "token ids >= vocab_size have no embedding. Use the tokenizer this checkpoint was trained with, or "
            "remove the tokenizer files to load the model for token ids only"
        )
    return tokenizer


def _loading_bar(names: list[str], files: WeightFiles, folder: Path, progress: bool | None) -> Any:
    """`names`, with a bar when asked, or on a terminal for checkpoints of `LONG_LOAD_BYTES` or more."""
    long = sum(path.stat().st_size for path in files.files) >= LONG_LOAD_BYTES
    return progress_bar(names, progress=progress, long=long, desc=f"loading {folder.name}", leave=False)


def check_names_and_shapes(
    names: set[str],
    expected: dict[str, tuple[int, ...]],
    files: WeightFiles,
    folder: Path,
    described: str,
    shape_hint: Callable[[str], str] = lambda name: "",
) -> None:
    """Every tensor the config calls for is stored, nothing else, each with its shape, checked
    before a byte is copied. `described` says what the config claims and what to check;
    `shape_hint(name)` adds why a tensor has the shape it must have."""
    missing = sorted(set(expected) - names)
    unexpected = sorted(names - set(expected))
    if missing:
        raise CheckpointError(
            f"{folder}: {len(missing)} tensor(s) the config calls for are missing, e.g. {missing[:4]}; {described}"
        )
    if unexpected:
        raise CheckpointError(
            f"{folder}: {len(unexpected)} tensor(s) the config does not call for, e.g. {unexpected[:4]}; {described}"
        )
    for name, shape in expected.items():
        found = files.shape(name)
        if found != shape:
            raise CheckpointError(
                f"{files.file_of(name)}: tensor {name} has shape {list(found)}, but config.json implies "
                f"{list(shape)}{shape_hint(name)}"
            )


def check_tensors(names: set[str], files: WeightFiles, cfg: GatedQwen3Config, folder: Path) -> None:
    """The paper's layout: the tensors `expected_hf_shapes(cfg)` names."""
    described = (
        f"config.json describes gate={cfg.gate!r}, qkv_bias={cfg.qkv_bias}, use_qk_norm={cfg.use_qk_norm}, "
        f"tie_word_embeddings={cfg.tie_word_embeddings}: check that these flags match the weights"
    )

    def q_proj_hint(name: str) -> str:
        if not name.endswith("q_proj.weight"):
            return ""
        return f" (q_proj carries queries plus gate logits: gate={cfg.gate!r} gives {cfg.d_q_proj} rows)"

    check_names_and_shapes(names, expected_hf_shapes(cfg), files, folder, described, q_proj_hint)


def check_tied_copy(files: WeightFiles, folder: Path, embed_name: str = "model.embed_tokens.weight") -> None:
    """config.json ties the embeddings, yet lm_head.weight is stored: loading uses the embedding, so
    the stored copy must equal it (else the model would silently differ from the file)."""
    embed, head = files.get(embed_name), files.get("lm_head.weight")
    if embed.shape != head.shape or not torch.equal(embed, head.to(embed.dtype)):
        raise CheckpointError(
            f"{folder}: config.json sets tie_word_embeddings true, but the stored lm_head.weight differs "
            "from model.embed_tokens.weight; a tied model would drop it. Set tie_word_embeddings to false "
            "in config.json to use the stored lm_head.weight, or remove lm_head.weight from the weights"
        )


def warn_non_finite(folder: Path, names: list[str]) -> None:
    shown = ", ".join(names[:6]) + (f" and {len(names) - 6} more" if len(names) > 6 else "")
    warnings.warn(
        f"{folder}: {len(names)} tensor(s) hold NaN or Inf values: {shown}; the model's outputs will be "
        "NaN wherever they are used",
        NonFiniteWeightsWarning,
        stacklevel=3,
    )


def load_tokenizer(folder: Path) -> Any | None:
    present = [f for f in TOKENIZER_FILES if (folder / f).is_file()]
    if not present:
        logger.warning("%s has no tokenizer files; the model will take token ids only", folder)
        return None
    from transformers import AutoTokenizer

    try:
        # trust_remote_code=False: a checkpoint's Python files are never run.
        return AutoTokenizer.from_pretrained(str(folder), trust_remote_code=False)
    except Exception as error:  # tokenizers raise many types (ValueError, OSError, Exception from Rust)
        raise CheckpointError(
            f"{folder / present[0]}: the tokenizer files ({', '.join(present)}) cannot be loaded "
            f"({type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}); fix them, or remove "
            "them to load the model for token ids only"
        ) from None
