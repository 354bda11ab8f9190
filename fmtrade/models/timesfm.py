"""TimesFM 2.5 through the ``timesfm`` package (torch backend), and its zoo builder.

Loading, compiling and forecasting are the package's own code: the wrapper
``timesfm.TimesFM_2p5_200M_torch`` (``from_pretrained`` -> ``load_checkpoint``,
``compile(ForecastConfig)``, ``forecast(horizon, inputs)``). The one thing the
package cannot do is build a module other than the 200M one, so
:class:`TimesFM2p5` subclasses the wrapper and builds its module from the
*definition* stored in the checkpoint's ``config.json`` (key
``timesfm_2p5_definition``, the package's ``TimesFM_2p5_200M_Definition`` as
JSON). A ``config.json`` without that key (hub checkpoints) gets the stock 200M
definition, so hub ids and zoo directories take the same ``from_pretrained`` path.

Forecasting notes (also in docs/MODELS.md):

* Mixed lengths and NaNs: rows go to the package as a list of arrays; it strips
  leading NaNs, linearly interpolates inner NaNs and left-pads with masked zeros.
* Compiled configs: one ``ForecastConfig`` per (context bucket, horizon bucket,
  batch bucket) -- context rounded up to the input patch, horizon to the output
  patch, batch to a power of two -- compiled once and cached.
* Quantiles: the model outputs a mean and the levels 0.1..0.9 (continuous quantile
  head). Other levels are interpolated linearly between native levels; below 0.1
  and above 0.9 they are extrapolated with the slope of the two outermost levels
  (the same straight tail :class:`~fmtrade.models.base.Forecast` uses for VaR/ES).
* dtype: ``auto`` is float32 (the package's decode is written for float32);
  ``bfloat16`` runs the decode under ``torch.autocast``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import threading
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from timesfm import ForecastConfig, TimesFM_2p5_200M_torch
from timesfm.configs import ResidualBlockConfig, StackedTransformersConfig, TransformerConfig
from timesfm.timesfm_2p5.timesfm_2p5_base import TimesFM_2p5_200M_Definition
from timesfm.timesfm_2p5.timesfm_2p5_torch import TimesFM_2p5_200M_torch_module
from timesfm.torch.normalization import RMSNorm
from timesfm.torch.util import revin, update_running_stats

from fmtrade.errors import InputError
from fmtrade.io import write_dir_atomic
from fmtrade.models.base import Covariates, interpolate_quantiles
from fmtrade.models.neural import NeuralForecaster
from fmtrade.models.objective import MAX_TRAIN_CONTEXT, Objective

#: ``config.json`` key holding the module definition of a non-200M checkpoint.
DEFINITION_KEY = "timesfm_2p5_definition"

#: peft LoRA targets: fused q/k/v and output projections of attention, and the two feed-forward layers.
LORA_TARGET_MODULES: tuple[str, ...] = ("qkv_proj", "out", "ff0", "ff1")

#: Zoo sizes: transformer width/depth/heads. Patch lengths, the quantile head and the
#: architecture are the 200M model's (hidden_dims == model_dims, as in the published model).
#: ``published-small`` and ``base`` are the published 200M model itself (TimesFM 2.5 has one size).
_SIZES: dict[str, dict[str, int]] = {
    "tiny": {"model_dims": 64, "num_layers": 2, "num_heads": 4},
    "small": {"model_dims": 256, "num_layers": 6, "num_heads": 8},
    "published-small": {"model_dims": 1280, "num_layers": 20, "num_heads": 16},
    "base": {"model_dims": 1280, "num_layers": 20, "num_heads": 16},
}


# Definition <-> config.json ------------------------------------------------------------------


def definition_for_size(size: str) -> TimesFM_2p5_200M_Definition:
    """A TimesFM 2.5 definition with the zoo ``size``'s transformer dimensions."""
    if size not in _SIZES:
        raise InputError("size", f"{size!r} is not one of {', '.join(_SIZES)}")
    dims = _SIZES[size]
    stock = TimesFM_2p5_200M_Definition()
    md = dims["model_dims"]
    q = len(stock.quantiles) + 1
    return dataclasses.replace(
        stock,
        tokenizer=dataclasses.replace(stock.tokenizer, hidden_dims=md, output_dims=md),
        stacked_transformers=StackedTransformersConfig(
            num_layers=dims["num_layers"],
            transformer=dataclasses.replace(
                stock.stacked_transformers.transformer, model_dims=md, hidden_dims=md, num_heads=dims["num_heads"]
            ),
        ),
        output_projection_point=dataclasses.replace(
            stock.output_projection_point, input_dims=md, hidden_dims=md, output_dims=stock.output_patch_len * q
        ),
        output_projection_quantiles=dataclasses.replace(
            stock.output_projection_quantiles, input_dims=md, hidden_dims=md, output_dims=stock.output_quantile_len * q
        ),
    )


def definition_from_dict(doc: dict[str, Any]) -> TimesFM_2p5_200M_Definition:
    """Rebuild the package's definition dataclass from its JSON form; ValueError when inconsistent."""
    try:
        stacked = doc["stacked_transformers"]
        definition = TimesFM_2p5_200M_Definition(
            input_patch_len=int(doc["input_patch_len"]),
            output_patch_len=int(doc["output_patch_len"]),
            output_quantile_len=int(doc["output_quantile_len"]),
            quantiles=[float(q) for q in doc["quantiles"]],
            decode_index=int(doc["decode_index"]),
            tokenizer=ResidualBlockConfig(**doc["tokenizer"]),
            stacked_transformers=StackedTransformersConfig(
                num_layers=int(stacked["num_layers"]), transformer=TransformerConfig(**stacked["transformer"])
            ),
            output_projection_point=ResidualBlockConfig(**doc["output_projection_point"]),
            output_projection_quantiles=ResidualBlockConfig(**doc["output_projection_quantiles"]),
        )
    except (KeyError, TypeError) as exc:
        raise ValueError(f"config.json: invalid {DEFINITION_KEY} ({type(exc).__name__}: {exc})") from exc
    q = len(definition.quantiles) + 1
    expected = {
        "tokenizer.input_dims": (definition.tokenizer.input_dims, 2 * definition.input_patch_len),
        "output_projection_point.output_dims": (
            definition.output_projection_point.output_dims,
            definition.output_patch_len * q,
        ),
        "output_projection_quantiles.output_dims": (
            definition.output_projection_quantiles.output_dims,
            definition.output_quantile_len * q,
        ),
        "output_patch_len % input_patch_len": (definition.output_patch_len % definition.input_patch_len, 0),
    }
    for key, (got, want) in expected.items():
        if got != want:
            raise ValueError(f"config.json: {DEFINITION_KEY}.{key} is {got}, expected {want}")
    return definition


class TimesFM2p5Module(TimesFM_2p5_200M_torch_module):
    """The package's TimesFM 2.5 torch module, built from ``definition`` instead of the fixed 200M one."""

    def __init__(self, definition: TimesFM_2p5_200M_Definition) -> None:
        self.config = definition  # shadows the class-level 200M definition the parent reads in __init__
        super().__init__()


class TimesFM2p5(TimesFM_2p5_200M_torch):
    """timesfm's TimesFM 2.5 wrapper whose module follows the checkpoint's ``config.json`` definition.

    Everything else -- ``from_pretrained`` (hub or directory), ``load_checkpoint``,
    ``compile``, ``forecast``, ``save_pretrained`` -- is the package's own code.
    """

    def __init__(self, torch_compile: bool = False, config: dict | None = None) -> None:
        doc = (config or {}).get(DEFINITION_KEY)
        definition = definition_from_dict(doc) if doc is not None else TimesFM_2p5_200M_Definition()
        self.model = TimesFM2p5Module(definition)
        self.torch_compile = torch_compile
        if config is not None:
            self._hub_mixin_config = config


def save_timesfm_checkpoint(module: TimesFM_2p5_200M_torch_module, out_dir: Path) -> Path:
    """Write ``module`` as a checkpoint directory (config.json with its definition + the package's
    model.safetensors) through the package's ``save_pretrained``; atomically, ``out_dir`` must not exist."""
    wrapper = TimesFM2p5.__new__(TimesFM2p5)
    wrapper.model = module
    config = {DEFINITION_KEY: dataclasses.asdict(module.config)}
    return write_dir_atomic(Path(out_dir), lambda tmp: wrapper.save_pretrained(tmp, config=config))


def build_timesfm_checkpoint(out_dir: Path, size: str = "tiny", seed: int = 0) -> Path:
    """A TimesFM 2.5 checkpoint of the zoo ``size`` with seeded initial weights.

    Linear layers keep torch's default init; RMSNorm scales (which the package
    initialises to zero, i.e. to "layer off", expecting trained weights) are set to one.
    """
    out = Path(out_dir)
    if out.exists():
        raise InputError("out_dir", f"{out} already exists; remove it or choose another directory")
    definition = definition_for_size(size)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        module = TimesFM2p5Module(definition)
    for layer in module.modules():
        if isinstance(layer, RMSNorm):
            torch.nn.init.ones_(layer.scale)
    return save_timesfm_checkpoint(module, out)


def load_timesfm(source: str, torch_compile: bool = False) -> TimesFM2p5:
    """Load a hub id or checkpoint directory through the package's ``from_pretrained``."""
    return TimesFM2p5.from_pretrained(source, torch_compile=torch_compile)


# Training objective ----------------------------------------------------------------------------


class TimesFMObjective(Objective["TimesFMForecaster"]):
    """The package has no training code, so the loss is written here, on the package's module and
    normalisation: every input patch is normalised with the running mean/std the package's decoder
    uses, and both heads are scored on the values that follow that patch (decoder-only training, as
    in the TimesFM paper): squared error for the mean channel, pinball loss for the quantile
    channels of the point head and of the continuous quantile head. Only patches with at least
    :attr:`MIN_PATCHES` patches of context are scored."""

    MIN_PATCHES = 4

    def _native(self, forecaster: TimesFMForecaster) -> tuple[int, int]:
        self.core = forecaster.module  # the unwrapped module: patch sizes and quantile levels
        self.levels = torch.tensor(self.core.config.quantiles, dtype=torch.float32, device=self.device)
        patch = self.core.p
        return MAX_TRAIN_CONTEXT // patch * patch, self.core.o

    def loss(self, model: torch.nn.Module, windows: torch.Tensor) -> torch.Tensor:
        core, p = self.core, self.core.p
        w = windows.to(self.device, torch.float32)
        b, length = w.shape
        n = self.geometry.context // p
        observed = torch.isfinite(w)
        x = torch.where(observed, w, 0.0)
        patches = x[:, : n * p].reshape(b, n, p)
        missing = ~observed[:, : n * p].reshape(b, n, p)
        stats = (torch.zeros(b, device=w.device), torch.zeros(b, device=w.device), torch.zeros(b, device=w.device))
        mus, sigmas = [], []
        for i in range(n):  # causal running statistics: patch i is normalised by patches 0..i
            stats, _ = update_running_stats(*stats, patches[:, i], missing[:, i])
            mus.append(stats[1])
            sigmas.append(stats[2])
        mu, sigma = torch.stack(mus, 1), torch.stack(sigmas, 1)
        normed = torch.where(missing, 0.0, revin(patches, mu, sigma))
        (_, _, point, spread), _ = model(normed, missing)
        point = point.reshape(b, n, core.o, core.q)
        spread = spread.reshape(b, n, core.os, core.q)
        # Score positions with at least MIN_PATCHES patches of context: after one 32-value patch the
        # normalised 128-step target of a random walk has a variance that swamps everything else.
        k = min(self.MIN_PATCHES, n) - 1
        spread = spread[:, k:, : min(core.os, length - p)]
        point_loss, spread_loss = (
            self._head_loss(pred, x, observed, mu[:, k:], sigma[:, k:], k) for pred in (point[:, k:], spread)
        )
        return point_loss + spread_loss

    def _head_loss(
        self,
        pred: torch.Tensor,
        x: torch.Tensor,
        observed: torch.Tensor,
        mu: torch.Tensor,
        sigma: torch.Tensor,
        first: int,
    ) -> torch.Tensor:
        """``pred [b, n, S, q]`` for the S values after patches ``first..first + n - 1``, scored in each
        patch's normalised units."""
        _, n, steps, _ = pred.shape
        length = x.shape[1]
        ends = torch.arange(first + 1, first + n + 1, device=x.device) * self.core.p
        idx = ends[:, None] + torch.arange(steps, device=x.device)
        valid = idx < length
        idx = idx.clamp(max=length - 1)
        target = revin(x[:, idx], mu, sigma)
        mask = (observed[:, idx] & valid).float()
        err = target[..., None] - pred[..., 1:]
        pinball = torch.maximum(self.levels * err, (self.levels - 1.0) * err).sum(-1)
        loss = (pred[..., 0] - target) ** 2 + 2.0 * pinball
        return (loss * mask).sum() / mask.sum().clamp_min(1.0)


# Forecaster ------------------------------------------------------------------------------------


class TimesFMForecaster(NeuralForecaster):
    """TimesFM 2.5 (deterministic, point + quantile head) via the ``timesfm`` package.

    Options: ``adapter`` (peft LoRA directory, merged at load), ``torch_compile``
    (``torch.compile`` the module's forward, the package's flag), ``force_flip_invariance``
    (the package's flag; doubles compute, default True as the package recommends).
    """

    family = "timesfm"
    lora_target_modules: ClassVar[tuple[str, ...]] = LORA_TARGET_MODULES
    objective_class = TimesFMObjective
    auto_dtype = "float32"  # the package's decode is written for float32; bfloat16 runs it under autocast
    module: TimesFM2p5Module

    def _take_options(self, options: dict[str, Any]) -> None:
        self._torch_compile = bool(options.pop("torch_compile", False))
        self._flip = bool(options.pop("force_flip_invariance", True))

    def _load(self, source: str) -> torch.nn.Module:
        self._tfm = load_timesfm(source, self._torch_compile)
        self._compiled: dict[tuple[int, int, int], tuple[Any, int, Any]] = {}
        self._lock = threading.Lock()  # the package keeps the active compiled config on the wrapper
        module = self._tfm.model
        module.device = torch.device(self.device)  # the package places inputs on module.device
        module.device_count = 1
        return module

    def _limits(self) -> tuple[int, int]:
        definition = self.module.config
        self._patch = definition.input_patch_len
        self._out_patch = definition.output_patch_len
        self._native_levels = tuple(float(q) for q in definition.quantiles)
        # The continuous quantile head covers output_quantile_len steps; context + horizon buckets
        # must fit the package's context_limit.
        horizon = int(definition.output_quantile_len)
        horizon_cap = math.ceil(horizon / self._out_patch) * self._out_patch
        return (definition.context_limit - horizon_cap) // self._patch * self._patch, horizon

    def save_checkpoint(self, out_dir: Path) -> Path:
        return save_timesfm_checkpoint(self.module, out_dir)

    def _use_config(self, context: int, horizon: int, batch: int) -> None:
        """Make the package's compiled decode for these buckets active (compiled once, then cached)."""
        key = (
            math.ceil(context / self._patch) * self._patch,
            math.ceil(horizon / self._out_patch) * self._out_patch,
            min(1 << max(batch - 1, 0).bit_length(), self.max_batch_size),
        )
        if key not in self._compiled:
            self._tfm.compile(
                ForecastConfig(
                    max_context=key[0],
                    max_horizon=key[1],
                    per_core_batch_size=key[2],
                    normalize_inputs=True,
                    use_continuous_quantile_head=True,
                    force_flip_invariance=self._flip,
                    infer_is_positive=True,
                    fix_quantile_crossing=True,
                )
            )
            self._compiled[key] = (self._tfm.forecast_config, self._tfm.global_batch_size, self._tfm.compiled_decode)
        self._tfm.forecast_config, self._tfm.global_batch_size, self._tfm.compiled_decode = self._compiled[key]

    def _predict(
        self,
        contexts: list[np.ndarray],
        horizon: int,
        quantile_levels: tuple[float, ...],
        covariates: list[Covariates | None],
        seeds: list[int],
    ) -> tuple[np.ndarray, np.ndarray]:
        autocast = (
            torch.autocast(torch.device(self.device).type, dtype=self.torch_dtype)
            if self.torch_dtype != torch.float32
            else contextlib.nullcontext()
        )
        with self._lock, autocast:
            self._use_config(max(c.size for c in contexts), horizon, len(contexts))
            _, full = self._tfm.forecast(horizon, list(contexts))  # [b, H, 1 + Qn]: mean, then native levels
        full = np.asarray(full, dtype=np.float64)
        quantiles = interpolate_quantiles(full[..., 1:], self._native_levels, np.asarray(quantile_levels))
        return full[..., 0], quantiles
