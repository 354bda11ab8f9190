"""``fmtrade models list|build``: what the registry offers and building the local zoo."""

from __future__ import annotations

import typer
from rich.console import Console

from fmtrade.cli.common import (
    JSON_OPTION,
    PRETRAIN_MINUTES_OPTION,
    emit_json,
    print_table,
    settings,
    split_csv,
    zoo_build_options,
)
from fmtrade.models.zoo import SIZES, build_zoo, list_models

app = typer.Typer(help="The model registry and the local model zoo.", no_args_is_help=True)


@app.command("list")
def list_command(json_out: bool = JSON_OPTION) -> None:
    """Models of the active registry profile and whether their weights are available here."""
    rows = list_models(settings())
    if json_out:
        emit_json(rows)
        return
    columns = ["name", "family", "source", "available", "enabled", "device", "checkpoint"]
    print_table(rows, columns, title=f"models (profile {settings().models.profile})")


@app.command("build")
def build_command(
    only: str = typer.Option(None, "--only", help="Comma-separated zoo model names (default: all)."),
    force: bool = typer.Option(False, "--force", help="Rebuild checkpoints that already exist."),
    seed: int = typer.Option(0, "--seed", help="Seed of the initial weights."),
    size: str = typer.Option(
        None,
        "--size",
        help=f"Build from seeded weights at this size ({'|'.join(SIZES)}; published-small and base: each "
        "family at its published checkpoints' size, for GPUs) instead of copying the shipped tiny weights.",
    ),
    pretrain_minutes: float = PRETRAIN_MINUTES_OPTION,
    json_out: bool = JSON_OPTION,
) -> None:
    """Build the zoo: copy the pretrained checkpoints the package ships (seconds), or with
    --pretrain-minutes build each from seeded weights and pretrain it in this process
    (``fmtrade pretrain`` is the Ray Train job); --size builds random-initialised at that size."""
    options = zoo_build_options(pretrain_minutes, seed)
    if size is not None:
        options["use_shipped"] = False  # the shipped weights are tiny ones
    with Console(stderr=True).status("building the model zoo"):
        rows = build_zoo(settings(), only=split_csv(only, "--only") or None, size=size or "tiny", seed=seed,
                         force=force, **options)  # fmt: skip
    if json_out:
        emit_json(rows)
        return
    print_table(rows, ["name", "family", "status", "seconds", "checkpoint"], title=f"model zoo {settings().zoo_dir()}")
