"""Command-line options shared by several ``mkedit`` commands (one definition, one help text)."""

from __future__ import annotations

from typing import Annotated

import typer

from mkedit.models.device import DTYPES

ModelOpt = Annotated[str, typer.Option("--model", "-m", help="Packaged short name, HF id, local folder or .gguf")]
DeviceOpt = Annotated[
    str, typer.Option("--device", help="auto (a CUDA device when present, else cpu), cpu, cuda, cuda:N or mps")
]
DtypeOpt = Annotated[
    str, typer.Option("--dtype", help=f"auto (bfloat16 on a GPU, float32 on cpu) or one of {', '.join(DTYPES)}")
]
LangsOpt = Annotated[str | None, typer.Option("--langs", help="Comma-separated languages to use, e.g. en,zh")]
MethodOpt = Annotated[str, typer.Option("--method", help="Editing method (see mkedit methods)")]
SetOpt = Annotated[
    list[str] | None,
    typer.Option("--set", help="Override a hyperparameter, KEY=VALUE (repeatable; see mkedit methods)"),
]
WorkersOpt = Annotated[
    int, typer.Option("--workers", min=0, help="Spread the work over N Ray workers (0: this process)")
]
AddressOpt = Annotated[
    str | None, typer.Option("--address", help="Ray cluster to join with --workers (default: start a local one)")
]
