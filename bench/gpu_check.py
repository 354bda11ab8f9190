"""The GPU check: one short, scripted run that measures fmtrade's model path on one GPU.

GPU time comes rarely and in windows of ~15 minutes, so this script is prepared to run unchanged
on the first GPU that comes (``make gpu-check``) and to finish inside ``--budget-s`` (default 420 s):
a measurement whose estimated cost would overrun its part's share of the budget is skipped and
says so. It writes ``gpu_check.json`` and ``gpu_check.md`` under ``--out``.

1. Per family at its published size (``--size`` of the zoo builders; random weights, speed does not
   depend on training): forecasts/s at batch 1, 64, 512 and 4096 (context 512, horizon 24) through
   fmtrade's ``Forecaster.forecast`` and through the family's own stock pipeline on the same
   checkpoint and inputs, their ratio, and bf16 vs fp32 agreement of fmtrade's median forecast.
   Lag-Llama has no installable package (fmtrade implements it natively): no stock column.
2. Serving. Where Ray imports and a GPU is present, ``bench/serve_load.py`` drives the real Serve
   app. Elsewhere (the lent GPU box has no Ray) each family's deployment batching is driven
   in-process: an asyncio batcher with the ``max_batch_size`` and ``batch_wait_timeout_s`` that
   ``serve/config.yaml`` gives the family, one batch computing at a time (``@serve.batch``'s
   default), the model called in a worker thread as ``ModelDeployment._batched`` calls it, fed by
   64 and 256 closed-loop clients of one series each. The JSON says which of the two ran.
3. LoRA (rank 8, the family's target modules) vs full fine-tuning steps/s for Chronos-Bolt on the
   family's own training loss.
4. Device, driver and library versions.

``--smoke`` runs every code path on CPU at the zoo's ``tiny`` size with small batches in seconds
(CI runs it). The import chain is kept lean on purpose -- the model adapters and their libraries,
not fmtrade's config, registry or Ray layers -- so the script runs on a box that has only torch,
transformers, peft, pandas, pyarrow and the wheels ``scripts/gpu_wheels.sh`` puts in ``.whl/``.

    python3 bench/gpu_check.py [--smoke] [--out build/gpu-check] [--budget-s 420] [--families a,b]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import importlib
import importlib.metadata
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # local checkpoints only: the hub client must never wait on a network
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import torch  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

LEVELS = (0.1, 0.5, 0.9)
#: Share of the time budget each part may use up to (cumulative): throughput, serving, LoRA.
PART_ENDS = {"throughput": 0.6, "serving": 0.85, "lora": 1.0}


@dataclass(frozen=True)
class Case:
    """One measured model: a family built at a size by its zoo builder."""

    name: str
    family: str
    size: str
    #: Rows per model call on both paths (sampling families decode rows x paths sequences).
    chunk: int = 4096
    #: Adapter options (the smoke run's fewer sample paths).
    options: dict[str, Any] = field(default_factory=dict)


#: Published sizes (docs/MODELS.md): the zoo builders' ``published-small`` and ``base``.
GPU_CASES = (
    Case("chronos-bolt-small", "chronos-bolt", "published-small"),
    Case("chronos-bolt-base", "chronos-bolt", "base"),
    Case("timesfm-2.5-200m", "timesfm", "base"),
    Case("chronos-2", "chronos2", "base"),
    Case("chronos-t5-small", "chronos", "published-small", chunk=256),
    Case("lag-llama", "lagllama", "base", chunk=256),
)
#: The same code paths at the zoo's ``tiny`` size (one Chronos-Bolt: both published Bolts are tiny here).
SMOKE_CASES = tuple(
    Case(c.name, c.family, "tiny", 8, {"num_samples": 4} if c.family in ("chronos", "lagllama") else {})
    for c in GPU_CASES
    if c.name != "chronos-bolt-base"
)

#: Family -> (adapter module, forecaster class, zoo builder).
ADAPTERS = {
    "chronos": ("fmtrade.models.chronos", "ChronosForecaster", "build_chronos_checkpoint"),
    "chronos-bolt": ("fmtrade.models.chronos", "ChronosBoltForecaster", "build_chronos_bolt_checkpoint"),
    "chronos2": ("fmtrade.models.chronos", "Chronos2Forecaster", "build_chronos2_checkpoint"),
    "timesfm": ("fmtrade.models.timesfm", "TimesFMForecaster", "build_timesfm_checkpoint"),
    "lagllama": ("fmtrade.models.lagllama", "LagLlamaForecaster", "build_lagllama_checkpoint"),
}


@dataclass
class Plan:
    """What one run measures, and its clock."""

    smoke: bool
    device: str
    context: int
    horizon: int
    batches: tuple[int, ...]
    clients: tuple[int, ...]
    min_seconds: float
    serve_seconds: float
    lora_steps: int
    budget_s: float
    started: float = field(default_factory=time.perf_counter)

    def left(self, part: str) -> float:
        """Seconds left before ``part``'s share of the budget is spent."""
        return self.started + self.budget_s * PART_ENDS[part] - time.perf_counter()


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def free(device: str) -> None:
    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()


def contexts(count: int, length: int, seed: int = 0) -> list[np.ndarray]:
    """``count`` seeded geometric random walks of ``length`` hourly-like closes."""
    rng = np.random.default_rng(seed)
    steps = rng.normal(0.0, 0.01, size=(count, length))
    levels = rng.uniform(1.0, 5e4, size=(count, 1))
    return list(levels * np.exp(np.cumsum(steps, axis=1)))


# Versions ---------------------------------------------------------------------------------------


def versions() -> dict[str, Any]:
    """Device, driver and the libraries this check runs on."""
    libs = {}
    for dist in ("torch", "transformers", "peft", "accelerate", "chronos-forecasting", "timesfm", "pandas", "numpy"):
        try:
            libs[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            libs[dist] = None
    doc: dict[str, Any] = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "libraries": libs,
        "ray_importable": importlib.util.find_spec("ray") is not None,
        "cuda_available": torch.cuda.is_available(),
        "torch_cuda": torch.version.cuda,
    }
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        doc.update(
            gpu=props.name,
            gpu_memory_gib=round(props.total_memory / 2**30, 1),
            bf16_supported=torch.cuda.is_bf16_supported(),
            driver=_nvidia_smi("driver_version"),
        )
    return doc


def _nvidia_smi(query: str) -> str | None:
    if shutil.which("nvidia-smi") is None:
        return None
    try:
        done = subprocess.run(
            ["nvidia-smi", f"--query-gpu={query}", "--format=csv,noheader"], capture_output=True, text=True, timeout=20
        )
    except subprocess.TimeoutExpired:
        return None
    return done.stdout.strip().splitlines()[0] if done.returncode == 0 and done.stdout.strip() else None


# Models -----------------------------------------------------------------------------------------


def adapter(family: str) -> tuple[Any, Callable[..., Path]]:
    """The family's forecaster class and zoo builder; ImportError when its library is missing."""
    module_name, cls, builder = ADAPTERS[family]
    module = importlib.import_module(module_name)
    return getattr(module, cls), getattr(module, builder)


def build(case: Case, root: Path) -> Path:
    _, builder = adapter(case.family)
    return Path(builder(root / case.name, size=case.size, seed=0))


def forecaster(case: Case, checkpoint: Path, device: str, dtype: str) -> Any:
    cls, _ = adapter(case.family)
    return cls(case.name, str(checkpoint), device=device, dtype=dtype, max_batch_size=case.chunk, **case.options)


def stock_runner(case: Case, checkpoint: Path, plan: Plan, dtype: torch.dtype) -> tuple[Callable | None, str]:
    """``(run(rows), note)``: the family's own pipeline on the checkpoint, chunked like fmtrade's
    calls; ``(None, reason)`` for a family without one."""
    if case.family == "lagllama":
        return None, "no installable package: fmtrade's native implementation is the only one"
    if case.family == "timesfm":
        return _timesfm_stock(checkpoint, plan)
    from chronos import BaseChronosPipeline

    pipeline = BaseChronosPipeline.from_pretrained(str(checkpoint), device_map=plan.device, dtype=dtype)
    extra = {"num_samples": case.options["num_samples"]} if "num_samples" in case.options else {}

    def run(rows: list[np.ndarray]) -> None:
        for start in range(0, len(rows), case.chunk):
            tensors = [torch.from_numpy(r.astype(np.float32)) for r in rows[start : start + case.chunk]]
            if case.family == "chronos2":
                pipeline.predict(tensors, prediction_length=plan.horizon, batch_size=len(tensors))
            else:
                pipeline.predict(tensors, prediction_length=plan.horizon, **extra)

    return run, f"chronos.{type(pipeline).__name__}.predict"


def _timesfm_stock(checkpoint: Path, plan: Plan) -> tuple[Callable, str]:
    """timesfm's wrapper compiled with the flags fmtrade's adapter uses, one config per batch size.
    The stock class builds only the 200M module: a smaller (smoke) checkpoint loads through
    fmtrade's subclass, whose compile/forecast are still the package's."""
    from timesfm import ForecastConfig, TimesFM_2p5_200M_torch
    from timesfm.timesfm_2p5.timesfm_2p5_base import TimesFM_2p5_200M_Definition

    from fmtrade.models.timesfm import DEFINITION_KEY, TimesFM2p5, definition_from_dict

    stored = json.loads((checkpoint / "config.json").read_text()).get(DEFINITION_KEY)
    custom = stored is not None and definition_from_dict(stored) != TimesFM_2p5_200M_Definition()
    cls = TimesFM2p5 if custom else TimesFM_2p5_200M_torch
    model = cls.from_pretrained(str(checkpoint), torch_compile=False)
    model.model.device = torch.device(plan.device)
    model.model.to(plan.device)
    compiled: dict[str, int] = {}

    def run(rows: list[np.ndarray]) -> None:
        if compiled.get("batch") != len(rows):
            model.compile(
                ForecastConfig(
                    max_context=plan.context,
                    max_horizon=32,
                    per_core_batch_size=len(rows),
                    normalize_inputs=True,
                    use_continuous_quantile_head=True,
                    force_flip_invariance=True,
                    infer_is_positive=True,
                    fix_quantile_crossing=True,
                )
            )
            compiled["batch"] = len(rows)
        model.forecast(plan.horizon, list(rows))

    return run, f"timesfm.{cls.__name__}.compile+forecast" + (" (fmtrade subclass: non-200M size)" if custom else "")


def _sig(value: float) -> float:
    """Four significant digits: a slow model's 0.04 forecasts/s must not round to zero."""
    return float(f"{value:.4g}")


def rate(run: Callable[[list[np.ndarray]], Any], rows: list[np.ndarray], plan: Plan, part: str) -> dict[str, Any]:
    """Forecasts/s of ``run(rows)``: one warm-up call, then calls for at least ``plan.min_seconds``.
    Skipped (with the reason) when the warm-up alone shows it cannot fit the part's budget."""
    start = time.perf_counter()
    run(rows)
    sync(plan.device)
    first = time.perf_counter() - start
    if first + plan.min_seconds > plan.left(part):
        return {"forecasts_per_s": _sig(len(rows) / first), "calls": 1, "note": "warm-up call only (time budget)"}
    calls, began = 0, time.perf_counter()
    while True:
        run(rows)
        calls += 1
        sync(plan.device)
        elapsed = time.perf_counter() - began
        if elapsed >= plan.min_seconds:
            return {"forecasts_per_s": _sig(calls * len(rows) / elapsed), "calls": calls}


def throughput(case: Case, checkpoint: Path, plan: Plan) -> dict[str, Any]:
    """Part 1 for one case: both paths at every batch size, then bf16 vs fp32 agreement."""
    doc = rates(case, checkpoint, plan)
    free(plan.device)  # the models of rates() are gone: give their memory back before loading two more
    doc["bf16_vs_fp32"] = agreement(case, checkpoint, plan)
    return doc


def rates(case: Case, checkpoint: Path, plan: Plan) -> dict[str, Any]:
    """Forecasts/s through fmtrade's Forecaster and the stock pipeline at each batch size."""
    model = forecaster(case, checkpoint, plan.device, "auto")
    params = sum(p.numel() for p in model.module.parameters())
    stock, note = stock_runner(case, checkpoint, plan, model.torch_dtype)
    seeds = {b: list(range(b)) for b in plan.batches}
    paths: dict[str, Callable | None] = {
        "fmtrade": lambda rows: model.forecast(rows, plan.horizon, LEVELS, seeds=seeds[len(rows)]),
        "stock": stock,
    }
    rows: dict[int, dict[str, Any]] = {}
    last_s: dict[str, float] = {}  # per path: seconds per forecast at the previous batch size
    for batch in plan.batches:
        data = contexts(batch, plan.context)
        cell: dict[str, Any] = {"batch": batch}
        for path, run in paths.items():
            if run is None:
                continue
            estimate = last_s.get(path, 0.0) * batch * 2 + plan.min_seconds
            if estimate > plan.left("throughput"):
                cell[path] = {"skipped": f"estimated {estimate:.0f} s exceeds the time budget left"}
                continue
            cell[path] = rate(run, data, plan, "throughput")
            last_s[path] = 1.0 / max(cell[path]["forecasts_per_s"], 1e-9)
        if "forecasts_per_s" in cell.get("fmtrade", {}) and "forecasts_per_s" in cell.get("stock", {}):
            cell["ratio"] = round(cell["fmtrade"]["forecasts_per_s"] / cell["stock"]["forecasts_per_s"], 3)
        rows[batch] = cell
    return {
        "family": case.family,
        "size": case.size,
        "parameters": params,
        "dtype": str(model.torch_dtype).removeprefix("torch."),
        "chunk": case.chunk,
        "stock": note,
        "batches": list(rows.values()),
    }


def agreement(case: Case, checkpoint: Path, plan: Plan) -> dict[str, Any]:
    """fmtrade's median forecast in bfloat16 vs float32 on the same rows and seeds: |bf16 - fp32| as a
    fraction of the row's last price (sampling families also differ by the paths the rounding changes)."""
    rows = contexts(min(64, max(plan.batches)), plan.context, seed=1)
    seeds = list(range(len(rows)))
    medians = {}
    for dtype in ("float32", "bfloat16"):
        model = forecaster(case, checkpoint, plan.device, dtype)
        medians[dtype] = model.forecast(rows, plan.horizon, LEVELS, seeds=seeds).quantile(0.5)
        del model
        free(plan.device)
    # Scaled by each row's last price, not by the fp32 median: random weights can put a median near 0.
    last = np.array([row[-1] for row in rows])[:, None]
    rel = np.abs(medians["bfloat16"] - medians["float32"]) / last
    return {
        "rows": len(rows),
        "median_rel_error": float(np.median(rel)),
        "p99_rel_error": float(np.quantile(rel, 0.99)),
        "max_rel_error": float(rel.max()),
    }


# Serving ----------------------------------------------------------------------------------------


def serve_settings(gpu: bool) -> dict[str, dict[str, Any]]:
    """Per family: the ``max_batch_size`` and ``batch_wait_timeout_s`` serve/config.yaml gives it
    (model_defaults, then family_options, then gpu_family_options for a replica on a GPU)."""
    import yaml

    doc = yaml.safe_load((REPO / "serve" / "config.yaml").read_text())
    args = doc["applications"][0]["args"]
    defaults = args.get("model_defaults", {})
    families = args.get("family_options") or {}
    on_gpu = (args.get("gpu_family_options") or {}) if gpu else {}
    keys = ("max_batch_size", "batch_wait_timeout_s", "max_ongoing_requests", "gpu_share")
    out = {}
    for family in ADAPTERS:
        merged = {**defaults, **families.get(family, {}), **on_gpu.get(family, {})}
        out[family] = {k: merged[k] for k in keys if k in merged}
    return out


class Batcher:
    """``@serve.batch`` as ModelDeployment uses it: requests wait up to ``wait_s`` for a batch of at
    most ``max_batch`` series; one batch computes at a time, in a worker thread."""

    def __init__(self, call: Callable[[list[np.ndarray]], Any], max_batch: int, wait_s: float) -> None:
        self.call, self.max_batch, self.wait_s = call, max_batch, wait_s
        self.queue: asyncio.Queue[tuple[np.ndarray, asyncio.Future]] = asyncio.Queue()
        self.sizes: list[int] = []

    async def submit(self, row: np.ndarray) -> None:
        done = asyncio.get_running_loop().create_future()
        await self.queue.put((row, done))
        await done

    async def loop(self) -> None:
        while True:
            batch = [await self.queue.get()]
            deadline = time.perf_counter() + self.wait_s
            while len(batch) < self.max_batch:
                timeout = deadline - time.perf_counter()
                if timeout <= 0:
                    break
                try:
                    batch.append(await asyncio.wait_for(self.queue.get(), timeout))
                except TimeoutError:
                    break
            self.sizes.append(len(batch))
            await asyncio.to_thread(self.call, [row for row, _ in batch])
            for _, done in batch:
                done.set_result(None)


async def _drive(batcher: Batcher, clients: int, seconds: float, rows: list[np.ndarray]) -> list[float]:
    """``clients`` closed-loop clients, one series per request, for ``seconds``: latencies (ms)."""
    worker = asyncio.create_task(batcher.loop())
    latencies: list[float] = []
    stop = time.perf_counter() + seconds

    async def client(k: int) -> None:
        i = k
        while time.perf_counter() < stop:
            began = time.perf_counter()
            await batcher.submit(rows[i % len(rows)])
            latencies.append((time.perf_counter() - began) * 1000.0)
            i += clients

    await asyncio.gather(*(client(k) for k in range(clients)))
    worker.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await worker
    return latencies


def serving(case: Case, checkpoint: Path, plan: Plan, options: dict[str, Any]) -> dict[str, Any]:
    """Part 2 (in-process) for one case: served forecasts/s and latency vs the direct batched call."""
    max_batch = int(options.get("max_batch_size", 32))
    wait_s = float(options.get("batch_wait_timeout_s", 0.005))
    if plan.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    model = forecaster(case, checkpoint, plan.device, "auto")
    call = lambda rows: model.forecast(rows, plan.horizon, LEVELS)  # noqa: E731 - the replica's call, as _batched makes it
    data = contexts(max(plan.clients) * 2, plan.context, seed=2)
    direct_rows = data[: min(max_batch, max(plan.clients))]  # the largest batch the clients can form
    # Called from one worker thread, as the replica calls it (torch's intra-op threading differs
    # between the main thread and others: 10x apart on a loaded 2-core VM).
    worker = ThreadPoolExecutor(1)
    direct_call = lambda rows: worker.submit(call, rows).result()  # noqa: E731
    direct = rate(direct_call, direct_rows, plan, "serving")["forecasts_per_s"]
    doc: dict[str, Any] = {"max_batch_size": max_batch, "batch_wait_timeout_s": wait_s, "clients": []}
    for clients in (1, *plan.clients):
        if plan.serve_seconds + 5 > plan.left("serving"):
            doc["clients"].append({"clients": clients, "skipped": "time budget"})
            continue
        batcher = Batcher(call, max_batch, wait_s)
        asyncio.run(_drive(batcher, 1, plan.serve_seconds / 4, data))  # warm-up
        batcher = Batcher(call, max_batch, wait_s)
        began = time.perf_counter()
        latencies = asyncio.run(_drive(batcher, clients, plan.serve_seconds, data))
        elapsed = time.perf_counter() - began
        doc["clients"].append(
            {
                "clients": clients,
                "forecasts_per_s": _sig(len(latencies) / elapsed),
                "p50_ms": round(statistics.median(latencies), 2),
                "p99_ms": round(float(np.quantile(latencies, 0.99)), 2),
                "mean_batch": round(statistics.fmean(batcher.sizes), 1),
            }
        )
    # The direct call again after the load, the better of the two kept: a ratio against a baseline
    # measured while the machine happened to be busy would flatter the served path.
    doc["direct_forecasts_per_s"] = max(direct, rate(direct_call, direct_rows, plan, "serving")["forecasts_per_s"])
    worker.shutdown()
    for row in doc["clients"]:
        if "forecasts_per_s" in row:
            row["vs_direct"] = round(row["forecasts_per_s"] / doc["direct_forecasts_per_s"], 3)
    if plan.device.startswith("cuda"):
        doc["peak_gpu_memory_mib"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return doc


def serve_with_ray(case: Case, plan: Plan) -> dict[str, Any]:
    """Part 2 on a real Ray: bench/serve_load.py (the HTTP app on GPU replicas) as a subprocess."""
    size = case.size
    clients = ",".join(str(c) for c in (1, *plan.clients))
    cmd = [sys.executable, str(REPO / "bench" / "serve_load.py"), "--model", "chronos-bolt-fm-tiny"]
    cmd += ["--size", size, "--clients", clients, "--duration", str(plan.serve_seconds), "--json"]
    timeout = max(plan.left("serving"), 1.0)
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=REPO)
    except subprocess.TimeoutExpired:
        return {"mode": "ray-serve", "error": f"bench/serve_load.py did not finish in {timeout:.0f} s"}
    if done.returncode != 0:
        return {"mode": "ray-serve", "error": done.stderr.strip()[-800:]}
    return {"mode": "ray-serve", "command": " ".join(cmd[1:]), "result": json.loads(done.stdout)}


# LoRA -------------------------------------------------------------------------------------------


def lora_vs_full(case: Case, checkpoint: Path, plan: Plan) -> dict[str, Any]:
    """Part 3: steps/s of LoRA (rank 8, the family's targets) and of full fine-tuning, float32,
    on the family's own loss over the same seeded windows (batch 32)."""
    out: dict[str, Any] = {"family": case.family, "size": case.size, "batch": 32}
    for mode in ("full", "lora"):
        out[mode] = train_steps(case, checkpoint, plan, lora=mode == "lora")
        free(plan.device)
    out["lora_vs_full"] = round(out["lora"]["steps_per_s"] / out["full"]["steps_per_s"], 3)
    return out


def train_steps(case: Case, checkpoint: Path, plan: Plan, lora: bool) -> dict[str, Any]:
    """Timed optimiser steps (AdamW) of the module, or of a LoRA-wrapped copy of it."""
    from peft import LoraConfig, get_peft_model

    model = forecaster(case, checkpoint, plan.device, "float32")
    objective = model.objective()
    net = model.module.train()
    if lora:
        net = get_peft_model(net, LoraConfig(r=8, lora_alpha=16, target_modules=list(model.lora_target_modules)))
    params = [p for p in net.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    windows = torch.from_numpy(np.stack(contexts(32, objective.geometry.length, seed=3)).astype(np.float32))

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        objective.loss(net, windows).backward()
        optimizer.step()

    step()  # warm-up: optimiser state, kernels
    sync(plan.device)
    began, steps = time.perf_counter(), 0
    while steps < plan.lora_steps and time.perf_counter() - began < max(plan.left("lora") / 3, 0.5):
        step()
        steps += 1
    sync(plan.device)
    elapsed = time.perf_counter() - began
    return {
        "steps_per_s": _sig(steps / elapsed),
        "steps": steps,
        "trainable_parameters": sum(map(torch.numel, params)),
    }


# Report -----------------------------------------------------------------------------------------


@contextlib.contextmanager
def recorded(doc: dict[str, Any], key: str) -> Iterator[None]:
    """Run one measurement; a failure is recorded under ``key`` (type and message), never raised."""
    try:
        yield
    except Exception as exc:  # noqa: BLE001 - one broken measurement must not lose the others
        doc[key] = {"error": f"{type(exc).__name__}: {exc}"[:800]}


def markdown(report: dict[str, Any]) -> str:
    """The report as markdown tables (what docs/BENCHMARKS.md quotes)."""
    env, libs = report["environment"], report["environment"]["libraries"]
    kind = "CPU smoke, tiny sizes: not GPU numbers" if report["smoke"] else "published sizes"
    lines = [
        f"GPU check {report['date']} ({kind}); device {env.get('gpu') or 'cpu'}, driver {env.get('driver') or '-'}, "
        f"torch {libs['torch']}, transformers {libs['transformers']}, chronos-forecasting "
        f"{libs['chronos-forecasting']}, timesfm {libs['timesfm']}; {report['seconds']:.0f} s.",
        "",
        "| model | size | params | dtype | batch | fmtrade fc/s | stock fc/s | ratio |",
        "| --- | --- | ---: | --- | ---: | ---: | ---: | ---: |",
    ]
    for name, fam in report["throughput"].items():
        if "error" in fam:
            lines.append(f"| {name} | - | - | - | - | {fam['error'][:80]} | | |")
            continue
        for cell in fam["batches"]:
            fm, st = (_rate_text(cell.get(path, {})) for path in ("fmtrade", "stock"))
            lines.append(
                f"| {name} | {fam['size']} | {fam['parameters'] / 1e6:.1f}M | {fam['dtype']} | {cell['batch']} "
                f"| {fm} | {st} | {cell.get('ratio', '-')} |"
            )
    lines += ["", "| model | bf16 vs fp32: abs. difference of the medians / last price (median / p99 / max) |"]
    lines += ["| --- | --- |"]
    for name, fam in report["throughput"].items():
        agree = fam.get("bf16_vs_fp32", {})
        if "median_rel_error" in agree:
            errors = " / ".join(f"{agree[k]:.2e}" for k in ("median_rel_error", "p99_rel_error", "max_rel_error"))
            lines.append(f"| {name} | {errors} |")
    serve = report["serving"]
    lines += ["", f"Serving ({serve['mode']}): {serve['note']}", ""]
    lines += [
        "| model | max batch | wait ms | direct fc/s | clients | served fc/s | vs direct | p50 ms | p99 ms "
        "| mean batch | peak MiB |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, fam in serve.get("models", {}).items():
        if "error" in fam:
            lines.append(f"| {name} | {fam['error'][:80]} | | | | | | | | | |")
            continue
        for c in fam["clients"]:
            wait_ms = fam["batch_wait_timeout_s"] * 1000
            head = f"| {name} | {fam['max_batch_size']} | {wait_ms:g} | {fam['direct_forecasts_per_s']} "
            if "skipped" in c:
                lines.append(head + f"| {c['clients']} | {c['skipped']} | | | | | |")
                continue
            lines.append(
                head + f"| {c['clients']} | {c['forecasts_per_s']} | {c['vs_direct']} | {c['p50_ms']} | {c['p99_ms']} "
                f"| {c['mean_batch']} | {fam.get('peak_gpu_memory_mib', '-')} |"
            )
    lora = report["lora"]
    if "lora_vs_full" in lora:
        lines += [
            "",
            f"LoRA vs full fine-tuning ({lora['family']} {lora['size']}, batch {lora['batch']}, fp32): "
            f"full {lora['full']['steps_per_s']} steps/s ({lora['full']['trainable_parameters']:,} trainable), "
            f"LoRA {lora['lora']['steps_per_s']} steps/s ({lora['lora']['trainable_parameters']:,} trainable), "
            f"ratio {lora['lora_vs_full']}.",
        ]
    elif "error" in lora:
        lines += ["", f"LoRA vs full fine-tuning: {lora['error']}"]
    return "\n".join(lines) + "\n"


def _rate_text(cell: dict[str, Any]) -> str:
    return str(cell.get("forecasts_per_s", cell.get("skipped", "-")))


def make_plan(args: argparse.Namespace) -> Plan:
    device = "cuda" if torch.cuda.is_available() and not args.smoke else "cpu"
    if args.smoke:
        return Plan(True, device, 128, 8, (1, 8), (2, 4), 0.2, 0.2, 2, args.budget_s)
    return Plan(False, device, 512, 24, (1, 64, 512, 4096), (64, 256), 1.0, 4.0, 30, args.budget_s)


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Every part in turn; the report is written after each measurement, so a run stopped by its
    timeout still leaves what it measured."""
    plan = make_plan(args)
    cases = SMOKE_CASES if plan.smoke else GPU_CASES
    if args.families:
        cases = tuple(c for c in cases if c.name in args.families or c.family in args.families)
    if plan.smoke:
        torch.set_num_threads(min(2, torch.get_num_threads()))
    report: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "smoke": plan.smoke,
        "device": plan.device,
        "budget_s": plan.budget_s,
        "context": plan.context,
        "horizon": plan.horizon,
        "environment": versions(),
        "throughput": {},
    }
    if not plan.smoke and plan.device == "cpu":
        report["warning"] = "no CUDA device: published sizes measured on CPU"
    root = Path(tempfile.mkdtemp(prefix="fmtrade-gpu-check-"))
    try:
        built: dict[str, Path] = {}
        for case in cases:
            with recorded(report["throughput"], case.name):
                began = time.perf_counter()
                built[case.name] = build(case, root)
                report["throughput"][case.name] = throughput(case, built[case.name], plan)
                report["throughput"][case.name]["seconds"] = round(time.perf_counter() - began, 1)
            save(report, args.out, plan)
        report["serving"] = serving_part(cases, built, plan)
        save(report, args.out, plan)
        report["lora"] = {}
        lora_case = next((c for c in cases if c.family == "chronos-bolt" and c.name in built), None)
        if lora_case is None:
            report["lora"] = {"error": "no Chronos-Bolt checkpoint was built"}
        else:
            with recorded(report, "lora"):
                report["lora"] = lora_vs_full(lora_case, built[lora_case.name], plan)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    save(report, args.out, plan)
    return report


#: Modules the check must not pull in (heavy wheels the GPU box lacks); the report lists any loaded.
HEAVY = ("ray", "statsforecast", "numba", "fastapi", "uvicorn", "pydantic", "jax")


def save(report: dict[str, Any], out: Path, plan: Plan) -> None:
    """Write gpu_check.json and gpu_check.md under ``out`` (each atomically: temp file + rename)."""
    report["seconds"] = round(time.perf_counter() - plan.started, 1)
    report["heavy_modules_loaded"] = sorted(m for m in HEAVY if m in sys.modules)
    report.setdefault("serving", {"mode": "not run yet", "note": "-"})
    report.setdefault("lora", {})
    out.mkdir(parents=True, exist_ok=True)
    for name, text in (("gpu_check.json", json.dumps(report, indent=2)), ("gpu_check.md", markdown(report))):
        tmp = out / f".{name}.tmp"
        tmp.write_text(text)
        tmp.replace(out / name)


def serving_part(cases: tuple[Case, ...], built: dict[str, Path], plan: Plan) -> dict[str, Any]:
    """Part 2: Serve itself where Ray imports on a GPU box, else each family's batching in-process."""
    if plan.device.startswith("cuda") and importlib.util.find_spec("ray") is not None:
        bolt = next((c for c in cases if c.family == "chronos-bolt"), cases[0])
        return {**serve_with_ray(bolt, plan), "note": "Ray Serve over HTTP (bench/serve_load.py)"}
    reason = "no CUDA device" if plan.smoke or not plan.device.startswith("cuda") else "Ray is not importable here"
    doc: dict[str, Any] = {
        "mode": "in-process batching",
        "note": f"{reason}: each deployment's batching (serve/config.yaml's max_batch_size and batch_wait_timeout_s, "
        "one batch at a time, the model in a worker thread) driven in-process by closed-loop one-series clients; "
        "no HTTP, no Ray Serve",
        "models": {},
    }
    options = serve_settings(plan.device.startswith("cuda"))
    for case in cases:
        if case.name in built:
            with recorded(doc["models"], case.name):
                began = time.perf_counter()
                doc["models"][case.name] = serving(case, built[case.name], plan, options[case.family])
                doc["models"][case.name]["seconds"] = round(time.perf_counter() - began, 1)
            free(plan.device)
    return doc


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="CPU, tiny sizes, seconds (what CI runs)")
    parser.add_argument("--out", type=Path, default=REPO / "build" / "gpu-check")
    parser.add_argument("--budget-s", type=float, default=420.0, help="time budget; measurements past it are skipped")
    parser.add_argument("--families", type=lambda s: [x for x in s.split(",") if x], default=None)
    args = parser.parse_args()
    print(markdown(run(args)))


if __name__ == "__main__":
    main()
