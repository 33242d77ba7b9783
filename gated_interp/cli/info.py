"""`gated-interp info`: what a checkpoint is (config, files, non-finite tensors) and, with
`--plan`, where its blocks would go, without building the model."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from gated_interp.cli.common import DTYPES, MODEL_NAMES, UsageError, add_model_options, check_name


def add_info(commands: Any) -> None:
    info = commands.add_parser(
        "info",
        help="describe a checkpoint from its config and file headers, without building the model",
        description="Print a checkpoint's architecture, gate kind, q_proj layout, parameter count, weight "
        "files and their dtype, read from config.json and the weight files' headers, and the tensors holding "
        "NaN or Inf (each tensor read once, one at a time; the model is not built).",
    )
    info.add_argument("checkpoint", metavar="PATH_OR_VARIANT", help=f"a folder, or one of {', '.join(MODEL_NAMES)}")
    add_model_options(info, variants=False)
    info.add_argument(
        "--plan",
        action="store_true",
        help="print the device map load_hooked(..., device_map=...) would use and the GiB of weights per device, "
        "from config.json alone (no weights read; a hub id owner/name fetches its config.json only)",
    )
    info.add_argument("--device-map", default="auto", help="with --plan: auto, balanced, sequential, cpu, disk, ...")
    info.add_argument(
        "--max-memory",
        nargs="+",
        default=None,
        metavar="DEVICE=SIZE",
        help="with --plan: memory per device, e.g. 0=75GiB 1=75GiB cpu=200GiB (GPU indices, cpu)",
    )
    info.add_argument("--dtype", choices=DTYPES, default="bfloat16", help="with --plan: dtype of the loaded weights")
    info.set_defaults(handler=run_info)


def _max_memory(items: list[str] | None) -> dict[int | str, str] | None:
    if items is None:
        return None
    out: dict[int | str, str] = {}
    for item in items:
        device, sep, size = item.partition("=")
        if not sep or not device or not size:
            raise UsageError(f"--max-memory takes DEVICE=SIZE (e.g. 0=75GiB cpu=200GiB), got {item!r}")
        out[int(device) if device.isdigit() else device] = size
    return out


def run_info(args: argparse.Namespace) -> int:
    from gated_interp.loading.resolve import resolve_checkpoint

    name = args.checkpoint
    if args.plan:
        import torch

        from gated_interp.loading.device_map import plan_device_map

        hub_id = name.count("/") == 1 and not Path(name).expanduser().exists()
        if not hub_id:
            check_name(name)
        print(
            plan_device_map(
                name, device_map=args.device_map, max_memory=_max_memory(args.max_memory),
                dtype=getattr(torch, args.dtype), size=args.size,
            )
        )  # fmt: skip
        return 0
    check_name(name)
    folder = resolve_checkpoint(name, args.size)
    from gated_interp.loading.inspect import describe_checkpoint

    for key, value in describe_checkpoint(folder, name if name in MODEL_NAMES else None):
        print(f"{key + ':':<22} {value}")
    return 0
