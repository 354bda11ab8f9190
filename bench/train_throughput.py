"""Training throughput: Ray Train samples/s with 1 and 2 workers, LoRA vs full fine-tuning step time.

    .venv/bin/python bench/train_throughput.py [--arch chronos-bolt] [--steps 40] [--batch-size 32]

1. ``fmtrade pretrain`` (the real Ray Train job: Ray Data windows, DDP workers) for
   ``--steps`` steps with 1 and then 2 workers; samples/s counts training steps only
   (forward, backward, optimiser, and the DDP all-reduce), not Ray start-up or evaluation.
2. In one process: the mean step time of full fine-tuning and of LoRA (rank 8, the
   family's target modules) on the same batches, and the trainable-parameter counts.

Prints one JSON document with the measurements and the ratios.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import ray
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fmtrade.data.corpus import CorpusParams  # noqa: E402
from fmtrade.jobs.ray_runtime import init_ray  # noqa: E402
from fmtrade.models.registry import zoo_builder  # noqa: E402
from fmtrade.train.pretrain import PretrainParams, pretrain  # noqa: E402
from fmtrade.training import LoraParams, TrainingRun, corpus_windows, load_for_training  # noqa: E402

CORPUS = CorpusParams(markets=2, market_hours=4000, kernel_batches=1, kernel_series=8)


def ray_throughput(arch: str, workers: int, steps: int, batch_size: int, scratch: Path) -> dict:
    params = PretrainParams(
        arch=arch, out=scratch / f"out-{workers}", steps=steps, workers=workers, batch_size=batch_size,
        corpus_params=CORPUS, storage=str(scratch / "ray-train"),
    )  # fmt: skip
    result = pretrain(params)
    return {"workers": workers, "samples_per_s": result["samples_per_s"], "job_seconds": result["seconds"]}


def step_time(arch: str, lora: LoraParams | None, steps: int, batch_size: int, scratch: Path) -> dict:
    checkpoint = scratch / f"base-{'lora' if lora else 'full'}"
    if not checkpoint.exists():
        zoo_builder(arch)(checkpoint, size="tiny", seed=0)
    run = TrainingRun(load_for_training(arch, str(checkpoint)), lora=lora)
    train, _ = corpus_windows(["synthetic"], run.geometry, CORPUS)
    batches = [torch.from_numpy(train[i * batch_size : (i + 1) * batch_size]) for i in range(steps + 2)]
    for batch in batches[:2]:  # warm-up
        run.train_step(batch)
    start = time.perf_counter()
    for batch in batches[2:]:
        run.train_step(batch)
    seconds = (time.perf_counter() - start) / steps
    return {
        "step_ms": round(1000 * seconds, 1),
        "trainable_params": run.trainable_params,
        "total_params": run.total_params,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="chronos-bolt")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="fmtrade-bench-train-") as tmp:
        scratch = Path(tmp)
        full = step_time(args.arch, None, args.steps // 2, args.batch_size, scratch)
        lora = step_time(args.arch, LoraParams(rank=8), args.steps // 2, args.batch_size, scratch)
        init_ray("local")
        try:
            one = ray_throughput(args.arch, 1, args.steps, args.batch_size, scratch)
            two = ray_throughput(args.arch, 2, args.steps, args.batch_size, scratch)
        finally:
            ray.shutdown()
    report = {
        "arch": args.arch, "size": "tiny", "batch_size_per_worker": args.batch_size, "steps": args.steps,
        "torch_threads": torch.get_num_threads(), "ray": [one, two],
        "samples_per_s_2_over_1": round(two["samples_per_s"] / one["samples_per_s"], 2),
        "full_finetune": full, "lora_rank8": lora,
        "lora_over_full_step_time": round(lora["step_ms"] / full["step_ms"], 2),
        "lora_trainable_share": round(lora["trainable_params"] / lora["total_params"], 4),
    }  # fmt: skip
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
