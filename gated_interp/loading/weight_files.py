"""Tensor files of a checkpoint folder, read one tensor at a time.

Safetensors files are read with plain seeks rather than a memory map, so that loading a model never
holds more than the model plus one tensor in memory (a memory map would count the whole file
against the process while it is being read).
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import Tensor

from gated_interp.loading.errors import CheckpointError

_SAFETENSORS_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}


class WeightFiles:
    """Names, shapes and tensors of a folder's `*.safetensors` (single or sharded) or
    `pytorch_model.bin` (read with `torch.load(weights_only=True)`)."""

    def __init__(self, folder: Path):
        self.folder = folder
        self._entries: dict[str, tuple[Path, dict]] = {}  # safetensors: name -> (file, header entry)
        self._bin: dict[str, Tensor] | None = None
        self._data_start: dict[Path, int] = {}  # safetensors: where each file's tensor bytes begin
        safetensors = sorted(folder.glob("*.safetensors"))
        bins = sorted(folder.glob("pytorch_model*.bin"))
        if safetensors:
            for path in safetensors:
                header, self._data_start[path] = _read_safetensors_header(path)
                for name, entry in header.items():
                    self._entries[name] = (path, entry)
        elif bins:
            self._bin = {}
            for path in bins:
                # mmap: tensors stay on disk until copied into the model, one at a time.
                self._bin.update(torch.load(path, map_location="cpu", weights_only=True, mmap=True))
        else:
            raise CheckpointError(
                f"{folder} has no weights: expected model.safetensors, sharded *.safetensors with "
                "model.safetensors.index.json, or pytorch_model.bin"
            )

    def names(self) -> set[str]:
        return set(self._bin) if self._bin is not None else set(self._entries)

    def shape(self, name: str) -> tuple[int, ...]:
        if self._bin is not None:
            return tuple(self._bin[name].shape)
        return tuple(self._entries[name][1]["shape"])

    def dtype(self, name: str) -> str:
        """The tensor's dtype on disk, as safetensors names it (e.g. "BF16"), read from the header."""
        if self._bin is not None:
            return {v: k for k, v in _SAFETENSORS_DTYPES.items()}[self._bin[name].dtype]
        return self._entries[name][1]["dtype"]

    def get(self, name: str) -> Tensor:
        if self._bin is not None:
            return self._bin[name]
        path, entry = self._entries[name]
        start, end = entry["data_offsets"]
        # readinto a preallocated buffer: `bytearray(file.read(n))` would hold the bytes twice.
        data = bytearray(end - start)
        with open(path, "rb") as file:
            file.seek(self._data_start[path] + start)
            if file.readinto(data) != len(data):
                raise CheckpointError(f"{path}: tensor {name} is cut short (truncated file?)")
        dtype = _SAFETENSORS_DTYPES[entry["dtype"]]
        return (
            torch.frombuffer(data, dtype=dtype).reshape(entry["shape"])
            if data
            else torch.empty(entry["shape"], dtype=dtype)
        )

    def items(self) -> Iterator[tuple[str, Tensor]]:
        for name in sorted(self.names()):
            yield name, self.get(name)


def _read_safetensors_header(path: Path) -> tuple[dict[str, dict], int]:
    """The header's tensor entries, and the byte offset at which tensor data starts."""
    try:
        with open(path, "rb") as file:
            (length,) = struct.unpack("<Q", file.read(8))
            header = json.loads(file.read(length))
    except (struct.error, json.JSONDecodeError, UnicodeDecodeError) as error:
        raise CheckpointError(f"{path} is not a readable safetensors file: {error}") from error
    header.pop("__metadata__", None)
    for name, entry in header.items():
        if entry["dtype"] not in _SAFETENSORS_DTYPES:
            raise CheckpointError(f"{path}: tensor {name} has unsupported dtype {entry['dtype']}")
    return header, 8 + length
