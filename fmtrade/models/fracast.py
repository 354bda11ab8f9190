"""Fracast-0 through the ``fracast`` package: the project's first member whose weights were not trained here.

``fracast`` (Apache-2.0, pinned to :data:`FRACAST_VERSION`) ships the published Fracast-0 weights (85,001
parameters: a causal dilated-convolution block shared across a ladder of ten dilations, and a quantile
head) inside its wheel. Weights load with the package's own ``FracastModel.from_pretrained`` and
forecasts come from its own ``forecast_batch``, so the bundled weights, a local copy and a hub snapshot
take the same path.

* Source. The zoo entry ``fracast-0`` is a copy of the bundled release: its builder checks the sha256
  of each bundled file against :data:`RELEASE_SHA256` and copies them (plus :data:`RELEASE_FILE`); a
  directory carrying that marker is checked again on every load, so a changed wheel or an edited copy
  is refused with the file's name. ``models build`` never pretrains it (published weights). A hub id
  (``ztxtech/fracast-0``) is downloaded by the package; fine-tuned copies load as plain directories.
* Forecasts. Native output: 48 steps at the nine levels 0.1..0.9, from a context of up to 2048 values
  that the package min-max normalises itself (span floored at 1e-5) and masks where missing (NaN gaps
  and padding alike). Longer horizons use the package's own autoregressive extension (its median fed
  back), up to :data:`AUTOREGRESSIVE_BLOCKS` blocks. Other levels come from
  :func:`fmtrade.models.base.interpolate_quantiles`: linear between native levels and, below 0.1 or
  above 0.9, extended with the slope of the two outermost levels. The nine outputs can cross, so they are
  sorted first. ``mean`` is the (sorted) native median: the model has no mean output, and its
  autoregressive extension feeds the median too. Deterministic: seeds
  are ignored.
* Fine-tuning. The package has no training code: :class:`FracastObjective` is the pinball loss on the
  nine native quantiles over the native horizon, in the package's normalised units, through the same
  encoder + head forward the package calls. LoRA targets the Linear projections (the shared block's,
  hence every dilation at once, and the head's); the depthwise temporal filters are raw parameters
  applied with ``F.conv1d``, which peft cannot wrap, so they stay frozen under LoRA.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, ClassVar, cast

import numpy as np
import torch
from fracast import FracastModel
from fracast._core.gather_head import GatherQuantileHead
from fracast.inference import _resolve_model_dir
from safetensors.torch import save_file

from fmtrade.errors import InputError
from fmtrade.io import write_dir_atomic, write_json_atomic
from fmtrade.models.base import NEURAL_WORKING_RANGE, Covariates, interpolate_quantiles
from fmtrade.models.checkpoints import ModelLoadError, sha256
from fmtrade.models.neural import NeuralForecaster
from fmtrade.models.objective import MAX_TRAIN_CONTEXT, Objective

#: The pinned release (pyproject.toml pins the same version: the hashes below are its files').
FRACAST_VERSION = "0.1.0"
#: sha256 of the bundled files fmtrade loads (fp32 weights and their config) in fracast 0.1.0.
RELEASE_SHA256: dict[str, str] = {
    "config.json": "1d7d2cf831f51ae2c5c9bf4cb4d8d4a49ec0085d6d55010814a1aae2a777a5dc",
    "model.safetensors": "0d678f123f3d1f91c5065cca2b5d40eccc469360afc2381b27290486011ded2c",
}
#: Written beside a copy of the release: a directory holding it claims to be the release and is verified.
RELEASE_FILE = "fracast-release.json"
#: Longest horizon in native blocks: every autoregressive block forecasts from the previous block's median.
AUTOREGRESSIVE_BLOCKS = 4
#: The package refuses contexts with fewer finite values.
MIN_OBSERVED = 8
#: peft LoRA targets: the shared block's pointwise and SwiGLU projections, the head's input and output.
LORA_TARGET_MODULES: tuple[str, ...] = ("pw", "up", "down", "summary_proj", "out_proj")
#: The package's normalisation floor on the context's span (``FracastModel._predict_rows``).
_SPAN_FLOOR = 1e-5


def verify_release(directory: Path) -> None:
    """Refuse ``directory`` unless its weights and config are byte for byte the pinned release's."""
    for name, expected in RELEASE_SHA256.items():
        path = directory / name
        actual = sha256(path) if path.is_file() else "missing"
        if actual != expected:
            raise ModelLoadError(
                f"{path}: sha256 {actual} is not that of the Fracast-0 release in fracast=={FRACAST_VERSION} "
                f"({expected}); reinstall fracast=={FRACAST_VERSION} and rebuild with `fmtrade models build --force`"
            )


def bundled_weights() -> Path:
    """The release directory inside the installed wheel (the package's own default source)."""
    return _resolve_model_dir(None)


def build_fracast_checkpoint(out_dir: Path, size: str = "tiny", seed: int = 0) -> Path:
    """The zoo's ``fracast-0``: the bundled release, verified, copied to ``out_dir`` with
    :data:`RELEASE_FILE`. ``size`` and ``seed`` (every zoo builder's arguments) do not apply: the
    release has one size and trained weights."""
    source = bundled_weights()
    verify_release(source)

    def copy(tmp: Path) -> None:
        for name in RELEASE_SHA256:
            shutil.copyfile(source / name, tmp / name)
        write_json_atomic(
            tmp / RELEASE_FILE, {"package": "fracast", "version": FRACAST_VERSION, "sha256": RELEASE_SHA256}
        )

    return write_dir_atomic(out_dir, copy)


class FracastNetwork(torch.nn.Module):
    """The package's encoder and head as one module (peft, the trainers and the base class need one),
    shared with the package's ``FracastModel``: forecasts and training run the same weights."""

    core: torch.nn.Module
    head: GatherQuantileHead

    def __init__(self, model: FracastModel) -> None:
        super().__init__()
        self.core = model.core
        self.head = cast(GatherQuantileHead, model.head)  # the only head the release ships

    def forward(self, values: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """Normalised context ``[B, 1, W]`` and its observed mask -> quantiles ``[B, H, Q]`` (normalised),
        the calls ``FracastModel._predict_rows`` makes."""
        hidden = self.core(values, valid, valid.to(values.dtype))
        return self.head.forward_horizon(hidden, last_obs=values[:, 0, -1:], ctx=values[:, 0], ctx_mask=valid[:, 0])


class FracastObjective(Objective["FracastForecaster"]):
    """Pinball loss on the nine native quantiles over the native 48 steps, in the units of the
    package's context normalisation (min-max over the observed context, span floored at 1e-5), through
    :meth:`FracastNetwork.forward`. Missing targets and rows with fewer than :data:`MIN_OBSERVED`
    observed context values are not scored."""

    def _native(self, forecaster: FracastForecaster) -> tuple[int, int]:
        model = forecaster.fracast
        self.width = model.context_length
        self.levels = torch.tensor(model.quantiles, dtype=torch.float32, device=self.device)
        return min(model.context_length, MAX_TRAIN_CONTEXT), model.horizon

    def loss(self, model: torch.nn.Module, windows: torch.Tensor) -> torch.Tensor:
        context, target = self._split(windows)
        rows, length = context.shape
        observed = torch.isfinite(context)
        loc = torch.where(observed, context, torch.inf).amin(1, keepdim=True).nan_to_num(0.0, 0.0, 0.0)
        top = torch.where(observed, context, -torch.inf).amax(1, keepdim=True).nan_to_num(0.0, 0.0, 0.0)
        span = (top - loc).clamp_min(_SPAN_FLOOR)
        values = torch.zeros(rows, 1, self.width, device=self.device)
        valid = torch.zeros(rows, 1, self.width, dtype=torch.bool, device=self.device)
        values[:, 0, -length:] = torch.where(observed, (context - loc) / span, 0.0)
        valid[:, 0, -length:] = observed
        pred = model(values, valid)  # [rows, H, Q]
        scored = torch.isfinite(target) & (observed.sum(1, keepdim=True) >= MIN_OBSERVED)
        err = torch.where(scored, (target - loc) / span, 0.0)[..., None] - pred
        pinball = torch.maximum(self.levels * err, (self.levels - 1.0) * err).mean(-1)
        return (pinball * scored).sum() / scored.sum().clamp_min(1)


class FracastForecaster(NeuralForecaster):
    """Fracast-0 (deterministic, nine native quantiles) via the ``fracast`` package.

    Options: ``adapter`` (peft LoRA directory, merged at load). ``dtype``: float32 only (``auto`` is
    float32): the package feeds float32 inputs and converts the output with ``numpy()``, which has no
    bfloat16 (and 85k parameters gain nothing from it).
    """

    family = "fracast"
    min_context = MIN_OBSERVED
    #: From a mean |value| of 1 up: the package's absolute span floor (1e-5) flattened a context at the
    #: shared floor's level (~0.001) that moved less than 1% (a random walk at 1e-7 came back 66% off);
    #: scaling by a power of two is exact and the package normalises, so in-range twins forecast the same.
    working_range = (1.0, NEURAL_WORKING_RANGE[1])
    lora_target_modules: ClassVar[tuple[str, ...]] = LORA_TARGET_MODULES
    objective_class = FracastObjective
    auto_dtype = "float32"
    module: FracastNetwork
    fracast: FracastModel

    def _load(self, source: str) -> torch.nn.Module:
        if self.torch_dtype != torch.float32:
            raise InputError("dtype", f"{self.family} computes in float32 only, got {self.torch_dtype}")
        directory = _resolve_model_dir(source)  # the package's resolver: local directory or hub snapshot
        if (directory / RELEASE_FILE).is_file():
            verify_release(directory)
        self._config: dict[str, Any] = json.loads((directory / "config.json").read_text())
        self.fracast = FracastModel.from_pretrained(directory, weights="fp32", device=self.device)
        self._median = self.fracast.quantiles.index(0.5)
        return FracastNetwork(self.fracast)

    def _limits(self) -> tuple[int, int]:
        return self.fracast.context_length, self.fracast.horizon * AUTOREGRESSIVE_BLOCKS

    def save_checkpoint(self, out_dir: Path) -> Path:
        """The package's release layout (``config.json`` + fp32 ``model.safetensors`` with ``core.``/``head.``
        keys), which ``FracastModel.from_pretrained(out_dir, weights="fp32")`` loads. No release marker:
        these are not the published weights."""

        def write(tmp: Path) -> None:
            (tmp / "config.json").write_text(json.dumps(self._config, indent=2) + "\n")
            state = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in self.module.state_dict().items()}
            save_file(state, str(tmp / "model.safetensors"))

        return write_dir_atomic(out_dir, write)

    def _predict(
        self,
        contexts: list[np.ndarray],
        horizon: int,
        quantile_levels: tuple[float, ...],
        covariates: list[Covariates | None],
        seeds: list[int],
    ) -> tuple[np.ndarray, np.ndarray]:
        longest = max(c.size for c in contexts)
        # Left-padded with NaN: the package masks padding like any missing value, so a row's
        # forecast does not depend on the longest row of its batch.
        batch = np.stack([np.pad(c, (longest - c.size, 0), constant_values=np.nan) for c in contexts])
        native = np.asarray(self.fracast.forecast_batch(batch, horizon=horizon), dtype=np.float64)
        native.sort(axis=-1)  # the nine outputs can cross (by ~0.1% of BTC's price): sorted before use
        quantiles = interpolate_quantiles(native, self.fracast.quantiles, np.asarray(quantile_levels))
        return native[..., self._median], quantiles
