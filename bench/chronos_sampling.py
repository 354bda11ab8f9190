"""Chronos T5 sampling cost, before and after encoding once, by batch size.

The Chronos T5 adapter draws ``num_samples`` token paths per row. It used to repeat each context
``num_samples`` times before the T5 encoder and to build its Gumbel noise from per-row tensors
joined with ``cat``. Now it encodes each context once, repeats only the encoder output for the
decoder (``_SeededChronosModel._sample_inputs``) and draws the noise into one buffer
(``_GumbelMaxSampler``). Variants (the older code is restored in the child process by patching
those two methods, so all run the same weights, seeds and ``Forecaster.forecast`` path, and must
return identical forecasts: checked):

* ``before``: contexts repeated before the encoder, ``cat`` noise (the previous adapter);
* ``encode-once``: encoded once, ``cat`` noise;
* ``encode-once+buffer``: encoded once, noise buffer (the adapter now).

Each (variant, rows) runs in a fresh process, so the peak RSS (``ru_maxrss``) belongs to that call
alone: load the tiny zoo checkpoint, warm up on one row, then time ``--repeats`` calls of
``forecast`` (the best and the worst are reported: the shared VM's load swings) on ``rows``
contexts of 512 hourly closes (BTCUSDT from ../shared/data when present, else a seeded synthetic
market), horizon 24, the checkpoint's default ``num_samples`` (20), 9 quantile levels.

    .venv/bin/python bench/chronos_sampling.py [--rows 32,64,128,256] [--before-rows 32,64,128] [--repeats 3] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from forecast_throughput import contexts  # noqa: E402  (bench/ is not a package)

from fmtrade.models.base import DEFAULT_QUANTILES  # noqa: E402
from fmtrade.models.chronos import (  # noqa: E402
    ChronosForecaster,
    _GumbelMaxSampler,
    _SeededChronosModel,
    build_chronos_checkpoint,
)

CONTEXT, HORIZON = 512, 24
VARIANTS = ("before", "encode-once", "encode-once+buffer")


def _cat_noise(self: Any, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
    """The sampler's previous noise: one tensor per row, joined with ``cat``, then fresh tensors per op."""
    scores = self.warpers(input_ids, scores)
    shape = (self.num_samples, scores.shape[-1])
    uniform = torch.cat(
        [torch.rand(shape, generator=g, device=scores.device, dtype=torch.float32) for g in self.generators]
    )
    tiny = torch.finfo(torch.float32).tiny
    return scores - torch.log(-torch.log(uniform.clamp_min(tiny)))


def _repeat_before_encoder(self: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor, samples: int) -> dict:
    """The adapter's previous ``generate`` inputs: every context repeated per sample path."""
    return {
        "input_ids": input_ids.repeat_interleave(samples, dim=0),
        "attention_mask": attention_mask.repeat_interleave(samples, dim=0),
    }


def run_one(checkpoint: str, variant: str, rows: int, repeats: int, out: str) -> None:
    """Child process: ``repeats`` timed calls; writes their seconds, peak RSS and the forecast to ``out``."""
    if variant == "before":
        _SeededChronosModel._sample_inputs = _repeat_before_encoder
    if variant in ("before", "encode-once"):
        _GumbelMaxSampler.__call__ = _cat_noise
    model = ChronosForecaster("chronos-fm-tiny", checkpoint, max_batch_size=rows)
    batch, _ = contexts(rows, CONTEXT, HORIZON)
    model.forecast(batch[:1], HORIZON, DEFAULT_QUANTILES, seeds=[0])  # warm-up: lazy init, allocator
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    load_before = os.getloadavg()[0]
    seconds = []
    for _ in range(repeats):
        began = time.perf_counter()
        fc = model.forecast(batch, HORIZON, DEFAULT_QUANTILES, seeds=list(range(rows)))
        seconds.append(time.perf_counter() - began)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    np.save(out + ".npy", fc.quantiles)
    result = {
        "seconds": min(seconds),
        "seconds_max": max(seconds),
        "peak_rss_mb": peak / 1024,
        "rss_before_call_mb": rss_before / 1024,
    }
    result["load_avg"] = [load_before, os.getloadavg()[0]]
    Path(out + ".json").write_text(json.dumps(result))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default="32,64,128,256", help="batch sizes for the encode-once variants")
    parser.add_argument("--before-rows", default="32,64,128", help="batch sizes for the previous adapter")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per (variant, rows)")
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    parser.add_argument(
        "--child", nargs=5, metavar=("CKPT", "VARIANT", "ROWS", "REPEATS", "OUT"), help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    if args.child:
        ckpt, variant, rows, repeats, out = args.child
        return run_one(ckpt, variant, int(rows), int(repeats), out)

    rows_new = [int(r) for r in args.rows.split(",") if r]
    plan = {"before": [int(r) for r in args.before_rows.split(",") if r]}
    plan |= {"encode-once": rows_new, "encode-once+buffer": rows_new}
    results: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = str(build_chronos_checkpoint(Path(tmp) / "chronos-fm-tiny", size="tiny", seed=0))
        for rows in sorted({r for rs in plan.values() for r in rs}):
            runs = {}
            for variant in VARIANTS:
                if rows not in plan[variant]:
                    continue
                out = str(Path(tmp) / f"{variant}-{rows}")
                cmd = [sys.executable, __file__, "--child", checkpoint, variant, str(rows), str(args.repeats), out]
                subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                runs[variant] = json.loads(Path(out + ".json").read_text())
                runs[variant]["quantiles"] = np.load(out + ".npy")
                run = runs[variant]
                print(
                    f"{variant:>22} rows={rows:4d} {run['seconds']:8.2f}-{run['seconds_max']:.2f} s "
                    f"peak RSS {run['peak_rss_mb']:7.0f} MB",
                    file=sys.stderr,
                )
            quantiles = [r.pop("quantiles") for r in runs.values()]
            identical = all(np.array_equal(quantiles[0], q) for q in quantiles[1:])
            results += [{"variant": v, "rows": rows, **r, "identical_forecasts": identical} for v, r in runs.items()]
    current = VARIANTS[-1]
    by = {(r["variant"], r["rows"]): r for r in results}
    for r in results:
        now = by.get((current, r["rows"]))
        r["seconds_vs_current"] = r["seconds"] / now["seconds"] if now else None
        r["peak_rss_vs_current"] = r["peak_rss_mb"] / now["peak_rss_mb"] if now else None
    if args.json:
        print(json.dumps({"context": CONTEXT, "horizon": HORIZON, "results": results}, indent=2))
        return
    print("| variant | rows | seconds best (worst) | s/row | peak RSS MB | time / now | RSS / now | identical | load |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in results:
        load = " -> ".join(f"{x:.1f}" for x in r["load_avg"])
        print(
            f"| {r['variant']} | {r['rows']} | {r['seconds']:.2f} ({r['seconds_max']:.2f}) "
            f"| {r['seconds'] / r['rows']:.3f} "
            f"| {r['peak_rss_mb']:.0f} | {r['seconds_vs_current']:.1f}x | {r['peak_rss_vs_current']:.2f}x "
            f"| {r['identical_forecasts']} | {load} |"
        )


if __name__ == "__main__":
    main()
