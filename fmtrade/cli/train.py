"""``fmtrade pretrain`` and ``fmtrade finetune``: the Ray Train jobs of ``train/``.

``train/`` (and Ray Train) is imported inside the commands, so the rest of the CLI
never pays for it and ``fmtrade/`` does not depend on ``train/`` at import time.
"""

from __future__ import annotations

from pathlib import Path

import typer

from fmtrade.cli.common import (
    CATEGORY_OPTION,
    INTERVAL_OPTION,
    JSON_OPTION,
    STORE_OPTION,
    SYMBOLS_OPTION,
    emit_json,
    market,
    print_table,
    settings,
    split_csv,
    split_numbers,
)
from fmtrade.data.store import to_utc

CORPUS_HELP = "Comma-separated sources: synthetic, kernelsynth, store:SYMBOL."


def pretrain(
    arch: str = typer.Option(..., "--arch", help="chronos-bolt | chronos2 | timesfm | chronos | lagllama"),
    size: str = typer.Option("tiny", "--size", help="tiny | small"),
    steps: int = typer.Option(None, "--steps", help="Optimiser steps per worker."),
    minutes: float = typer.Option(None, "--minutes", help="Training time budget instead of --steps."),
    workers: int = typer.Option(None, "--workers", help="Ray Train workers (default: train.workers)."),
    use_gpu: bool = typer.Option(None, "--use-gpu/--no-gpu", help="One GPU per worker (default: train.use_gpu)."),
    corpus: str = typer.Option("synthetic,kernelsynth", "--corpus", help=CORPUS_HELP),
    out: Path = typer.Option(..., "--out", help="Checkpoint directory to create (native format)."),
    batch_size: int = typer.Option(32, "--batch-size", help="Windows per worker per step."),
    lr: float = typer.Option(1e-3, "--lr", help="AdamW learning rate."),
    seed: int = typer.Option(None, "--seed", help="Initial weights and data seed (default: train.seed)."),
    storage: str = typer.Option(None, "--storage", help="Ray Train storage (path or s3://); default train storage."),
    until: str = typer.Option(
        None, "--until", help="Train on stored bars strictly before this date or ISO time (UTC); e.g. 2022-12-31."
    ),
    init: Path = typer.Option(
        None, "--init", help="Continue from this checkpoint (a previous --out) instead of seeded weights."
    ),
    store: str = STORE_OPTION,
    interval: str = INTERVAL_OPTION,
    category: str = CATEGORY_OPTION,
    json_out: bool = JSON_OPTION,
) -> None:
    """Pretrain a zoo architecture on synthetic, KernelSynth and stored series with Ray Train."""
    from fmtrade.train.pretrain import PretrainParams
    from fmtrade.train.pretrain import pretrain as run_pretrain

    cfg = settings()
    category, interval = market(category, interval)  # of the store: sources
    params = PretrainParams(
        arch=arch, out=out, size=size, steps=steps, minutes=minutes,
        workers=workers or cfg.train.workers, use_gpu=cfg.train.use_gpu if use_gpu is None else use_gpu,
        corpus=tuple(split_csv(corpus, "--corpus")), batch_size=batch_size, lr=lr,
        seed=cfg.train.seed if seed is None else seed, store=cfg.store_uri(store),
        interval=interval, category=category, storage=storage or cfg.train_storage(),
        until=to_utc(until, "until"), init=init,
    )  # fmt: skip
    result = run_pretrain(params, cfg.cluster.address)
    if json_out:
        emit_json(result)
        return
    print_table(
        [result],
        [
            "checkpoint",
            "steps",
            "train_loss_first",
            "train_loss_last",
            "val_loss_first",
            "val_loss_last",
            "samples_per_s",
            "seconds",
        ],
        title=f"pretrain {arch}-{size}",
    )


def finetune(
    base: str = typer.Option(..., "--base", help="Registry model to adapt."),
    symbols: str = SYMBOLS_OPTION,
    category: str = CATEGORY_OPTION,
    interval: str = INTERVAL_OPTION,
    mode: str = typer.Option("per-symbol", "--mode", help="per-symbol | pooled"),
    rank: int = typer.Option(8, "--rank", help="LoRA rank."),
    alpha: int = typer.Option(16, "--alpha", help="LoRA alpha."),
    target_modules: str = typer.Option("auto", "--target-modules", help="auto, or comma-separated module names."),
    epochs: int = typer.Option(3, "--epochs", help="Passes over the training windows (early stopping may end sooner)."),
    max_steps: int = typer.Option(None, "--max-steps", help="Cap on optimiser steps per run."),
    workers: int = typer.Option(None, "--workers", help="Ray Train workers (default: train.workers)."),
    use_gpu: bool = typer.Option(None, "--use-gpu/--no-gpu", help="One GPU per worker (default: train.use_gpu)."),
    val_start: str = typer.Option(None, "--val-start", help="Start of the test period (default: last 20%)."),
    max_train_bars: int = typer.Option(None, "--max-train-bars", help="Few-shot: train on the last N bars only."),
    horizon: int = typer.Option(24, "--horizon", help="Validation / test forecast horizon."),
    patience: int = typer.Option(2, "--patience", help="Epochs without better validation WQL before stopping."),
    lr: float = typer.Option(1e-3, "--lr", help="AdamW learning rate."),
    batch_size: int = typer.Option(32, "--batch-size", help="Windows per worker per step."),
    out: str = typer.Option(None, "--out", help="Adapters root, a path or URI (s3://...; default: <zoo>/adapters)."),
    storage: str = typer.Option(None, "--storage", help="Ray Train storage (path or s3://); default train storage."),
    tune: bool = typer.Option(False, "--tune", help="Ray Tune grid over --tune-lrs x --tune-ranks per adapter."),
    tune_lrs: str = typer.Option("3e-4,1e-3,3e-3", "--tune-lrs", help="Learning rates the --tune grid tries."),
    tune_ranks: str = typer.Option("4,8", "--tune-ranks", help="LoRA ranks the --tune grid tries."),
    tune_concurrent: int = typer.Option(1, "--tune-concurrent", help="Trials at once (each needs --workers CPUs)."),
    store: str = STORE_OPTION,
    json_out: bool = JSON_OPTION,
) -> None:
    """LoRA fine-tuning of a registry model per symbol (or pooled); prints zero-shot vs fine-tuned metrics."""
    from fmtrade.train.lora import FinetuneParams
    from fmtrade.train.lora import finetune as run_finetune
    from fmtrade.train.tune import TuneSpace
    from fmtrade.training import LoraParams

    cfg = settings()
    category, interval = market(category, interval)
    targets = None if target_modules == "auto" else tuple(split_csv(target_modules, "--target-modules"))
    space = None
    if tune:
        space = TuneSpace(
            lrs=tuple(split_numbers(tune_lrs, "tune_lrs", float)),
            ranks=tuple(split_numbers(tune_ranks, "tune_ranks", int)),
            max_concurrent=tune_concurrent,
        )
    params = FinetuneParams(
        base=base, symbols=tuple(split_csv(symbols, "--symbols")), category=category,
        interval=interval, mode=mode,  # type: ignore[arg-type]
        lora=LoraParams(rank=rank, alpha=alpha, target_modules=targets), epochs=epochs, max_steps=max_steps,
        workers=workers or cfg.train.workers, use_gpu=cfg.train.use_gpu if use_gpu is None else use_gpu,
        val_start=to_utc(val_start, "val_start"), max_train_bars=max_train_bars,
        adapters_root=out, storage=storage, store=store, horizon=horizon, batch_size=batch_size, lr=lr,
        patience=patience, seed=cfg.train.seed, tune=space,
    )  # fmt: skip
    result = run_finetune(cfg, params)
    if json_out:
        emit_json(result)
        return
    print_table(
        result["table"],
        ["symbol", "setting", "windows", "mape", "wql", "coverage_80", "directional_accuracy"],
        title=f"{base}: zero-shot vs fine-tuned (test from {result['val_start']})",
    )
    typer.echo(f"trainable {result['trainable_params']} of {result['total_params']} parameters; adapters:", err=True)
    for name, path in result["adapters"].items():
        typer.echo(f"  {name}: {path}", err=True)
    for name, swept in result.get("tune", {}).get("adapters", {}).items():
        print_table(
            swept["trials"],
            ["lr", "rank", "alpha", "best_val_wql", "step", "error"],
            title=f"{name}: tuning trials (best: lr {swept['best']['lr']:g}, rank {swept['best']['rank']})",
        )
