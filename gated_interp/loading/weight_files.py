"""Tensor files of a checkpoint folder: which files, and their tensors one at a time.

Which files: the index (`model.safetensors.index.json`, else `pytorch_model.bin.index.json`) when
there is one, loading exactly the shards its `weight_map` names; otherwise the one weights file of
the folder. A folder whose weights are ambiguous (two candidate files and no index) is refused.

Reading: `.safetensors` with the `safetensors` package (`safe_open`, which validates the header:
offsets that overlap, leave gaps or run past the file are errors), one tensor at a time, each file
opened per tensor so that no memory map outlives the tensor it served (peak memory stays the model
plus one tensor). `.bin` with `torch.load(weights_only=True)`, memory-mapped where the file is a
zip archive (legacy files are read whole): a pickle that holds anything but tensors is refused.
"""

from __future__ import annotations

import json
import logging
import pickle
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from torch import Tensor

from gated_interp.loading.errors import CheckpointError

logger = logging.getLogger(__name__)

# safetensors dtype names of the floating-point dtypes a checkpoint may hold.
FLOAT_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}
_NAME_OF = {dtype: name for name, dtype in FLOAT_DTYPES.items()}
SAFETENSORS_INDEX = "model.safetensors.index.json"
BIN_INDEX = "pytorch_model.bin.index.json"


class WeightFiles:
    """Names, shapes, dtypes and tensors of a folder's weights; see the module docstring for
    which files are read."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.files, self._where = _choose_files(folder)  # the files read; tensor name -> file
        self._bin: dict[str, Tensor] = {}
        self._header: dict[str, tuple[str, tuple[int, ...]]] = {}  # safetensors: name -> (dtype, shape)
        claimed: dict[str, Path] = {}
        for path in self.files:
            names = self._read_bin(path) if path.suffix == ".bin" else self._read_header(path)
            for name in names:
                if name in claimed:
                    raise CheckpointError(
                        f"{folder}: tensor {name} is stored in two files, {claimed[name].name} and {path.name}; "
                        "remove the stale file (or fix the index) so that each tensor has one source"
                    )
                claimed[name] = path
        if self._where is None:  # no index: every tensor of the one file
            self._where = claimed
        else:
            for name, path in self._where.items():
                if claimed.get(name) != path:
                    raise CheckpointError(
                        f"{folder}: the index says tensor {name} is in {path.name}, but that file does not hold it"
                    )

    # ---- header information (no tensor read for safetensors) ----
    def names(self) -> set[str]:
        return set(self._where)

    def shape(self, name: str) -> tuple[int, ...]:
        if name in self._bin:
            return tuple(self._bin[name].shape)
        return self._header[name][1]

    def dtype(self, name: str) -> str:
        """The tensor's dtype on disk as safetensors names it ("BF16", "I64", ...)."""
        if name in self._bin:
            dtype = self._bin[name].dtype
            return _NAME_OF.get(dtype, str(dtype).removeprefix("torch."))
        return self._header[name][0]

    def file_of(self, name: str) -> Path:
        return self._where[name]

    def check_float(self, names: set[str]) -> None:
        """Refuse integer, bool or complex tensors: casting them to float would silently change
        the model."""
        bad = sorted(name for name in names if self.dtype(name) not in FLOAT_DTYPES)
        if bad:
            listed = ", ".join(f"{name} ({self.dtype(name)})" for name in bad[:4])
            raise CheckpointError(
                f"{self.file_of(bad[0])}: {len(bad)} tensor(s) are not floating point, e.g. {listed}; "
                f"model weights must be one of {', '.join(FLOAT_DTYPES)}: this is not a model checkpoint "
                "in the released format, or it was quantised (quantised checkpoints are not supported)"
            )

    # ---- tensors ----
    def get(self, name: str) -> Tensor:
        if name in self._bin:
            return self._bin[name]
        path = self._where[name]
        try:
            with safe_open(str(path), framework="pt", device="cpu") as file:
                return file.get_tensor(name)
        except (SafetensorError, OSError) as error:
            raise CheckpointError(f"{path}: cannot read tensor {name}: {error}") from None

    def items(self) -> Iterator[tuple[str, Tensor]]:
        for name in sorted(self.names()):
            yield name, self.get(name)

    def _read_header(self, path: Path) -> list[str]:
        try:
            with safe_open(str(path), framework="pt", device="cpu") as file:
                names = list(file.keys())
                for name in names:
                    view = file.get_slice(name)
                    self._header[name] = (view.get_dtype(), tuple(view.get_shape()))
        except (SafetensorError, OSError, UnicodeDecodeError) as error:
            raise CheckpointError(f"{path} is not a readable safetensors file: {error}") from None
        return names

    def _read_bin(self, path: Path) -> list[str]:
        state = load_bin(path)
        self._bin.update(state)
        return list(state)


def load_bin(path: Path) -> dict[str, Tensor]:
    """`torch.load(weights_only=True)`, memory-mapped when the file allows it; anything but a
    flat dict of tensors is a CheckpointError."""
    try:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as error:
            if "mmap" not in str(error) and "zipfile" not in str(error):
                raise
            state = torch.load(path, map_location="cpu", weights_only=True)  # legacy (pre-zip) format
    except pickle.UnpicklingError as error:
        if "global" in str(error).lower() or "unsupported class" in str(error).lower():  # a refused object
            raise CheckpointError(
                f"{path} holds code or Python objects that are not tensors, and will not be loaded: "
                "a weights file must hold tensors only (safetensors is the safe format for sharing weights)"
            ) from None
        raise CheckpointError(f"{path} is not a readable PyTorch weights file: {error}") from None
    except Exception as error:  # torch raises many types for a file that is not a checkpoint
        raise CheckpointError(
            f"{path} is not a readable PyTorch weights file ({type(error).__name__}: {error})"
        ) from None
    if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, Tensor) for k, v in state.items()):
        raise CheckpointError(
            f"{path} does not hold a state dict (a mapping from names to tensors), but a {type(state).__name__}"
        )
    return state


# ---- which files --------------------------------------------------------------------------------


def _choose_files(folder: Path) -> tuple[list[Path], dict[str, Path] | None]:
    """The weight files to read, and (when an index says) which tensor is in which file."""
    for index_name in (SAFETENSORS_INDEX, BIN_INDEX):
        index = folder / index_name
        if index.is_file():
            return _from_index(folder, index)
    safetensors = sorted(folder.glob("*.safetensors"))
    bins = sorted(folder.glob("pytorch_model*.bin"))
    candidates = safetensors or bins
    if not candidates:
        raise CheckpointError(
            f"{folder} has no weights: expected model.safetensors, sharded *.safetensors with "
            f"{SAFETENSORS_INDEX}, or pytorch_model.bin"
        )
    if len(candidates) > 1:
        raise CheckpointError(
            f"{folder} holds {len(candidates)} weight files and no index saying which to load: "
            f"{', '.join(p.name for p in candidates)}. Keep only the checkpoint's file (or its shards with "
            f"their {SAFETENSORS_INDEX})"
        )
    return candidates, None


def _from_index(folder: Path, index: Path) -> tuple[list[Path], dict[str, Path]]:
    def no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        seen: dict[str, Any] = {}
        for key, value in pairs:
            if key in seen and seen[key] != value:
                raise CheckpointError(f"{index}: tensor {key} is claimed by two shards, {seen[key]} and {value}")
            seen[key] = value
        return seen

    try:
        content = json.loads(index.read_text(encoding="utf-8"), object_pairs_hook=no_duplicate_keys)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise CheckpointError(f"{index} is not valid JSON: {error}") from None
    weight_map = content.get("weight_map") if isinstance(content, dict) else None
    if not isinstance(weight_map, dict) or not weight_map:
        raise CheckpointError(f"{index} has no weight_map (a mapping from tensor names to shard files)")
    where: dict[str, Path] = {}
    for name, file_name in weight_map.items():
        path = folder / str(file_name)
        # A plain file name: no folder part, no "..". (Shards may be links, as in the hub's cache.)
        if not isinstance(file_name, str) or Path(file_name).name != file_name or file_name in (".", ".."):
            raise CheckpointError(
                f"{index} names {file_name!r} for tensor {name}, which is not a file inside {folder}; "
                "an index may only name shard files in its own folder"
            )
        if not path.is_file():
            raise CheckpointError(f"{index} names the shard {file_name} (for tensor {name}), which is missing")
        where[name] = path
    files = sorted(set(where.values()))
    kind = ".safetensors" if index.name == SAFETENSORS_INDEX else ".bin"
    if any(path.suffix != kind for path in files):
        raise CheckpointError(f"{index} must name {kind} shards only")
    unsharded = folder / ("model.safetensors" if kind == ".safetensors" else "pytorch_model.bin")
    if unsharded.is_file() and unsharded not in files:
        # Hugging Face would load the unsharded file and ignore the index: refuse to guess.
        raise CheckpointError(
            f"{folder} holds both {unsharded.name} and the shards of {index.name}, which may be different "
            "weights: remove the stale one"
        )
    strays = sorted(set(folder.glob(f"*{kind}")) - set(files))
    if strays:
        logger.warning("%s: ignoring %s, which %s does not name", folder, ", ".join(p.name for p in strays), index.name)
    return files, where
