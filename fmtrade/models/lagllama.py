"""Lag-Llama, implemented natively (Rasul et al. 2024, "Lag-Llama: Towards Foundation
Models for Probabilistic Time Series Forecasting"); there is no installable package.

Architecture: a decoder-only Llama (RMSNorm, rotary position embeddings, causal
self-attention, SwiGLU feed-forward) over *lag tokens*. The token that predicts
``x[j]`` holds the scaled series at ``x[j - l]`` for every lag ``l`` of the config,
an observed flag per lag, and the scaler's summary statistics
(``sign(loc) log1p|loc|``, ``log scale``). A Student-t head gives each step's
distribution (``df = 2 + softplus``, ``scale = softplus``).

Scaling is robust: ``loc`` = median and ``scale`` = interquartile range of the
observed context values (floored at ``min_scale * (1 + |loc|)``).

Missing values are masked natively: a NaN, or a lag reaching before the start
of the series, contributes value 0 with observed flag 0, so a context needs no
minimum length beyond two observations (the scaler's). ``max_context`` is
``context_length + max(lags)``: the model attends over ``context_length`` tokens
and each token looks back ``max(lags)`` steps; older values are never used.

Training objective (:meth:`LagLlamaModel.forward`): the Student-t negative log
likelihood of each next value in scaled space, over a window of
``context_length + prediction_length`` tokens.

Forecasting samples ``num_samples`` autoregressive paths. Randomness comes from
one ``torch.Generator`` per row seeded with that row's seed, turned into
Student-t draws with Bailey's polar method (exact; it needs only uniforms), so
each row's forecast depends on its context and seed alone, not on the batch.
Attention uses a key/value cache limited to ``context_length + prediction_length``
entries -- the span seen in training -- so horizons beyond ``prediction_length``
keep relative positions in the trained range.

The on-disk format (``config.json`` + ``model.safetensors``, via
``LagLlamaModel.save_pretrained`` / ``from_pretrained``) is this family's native format.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, NamedTuple, TypedDict

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from fmtrade.errors import InputError
from fmtrade.io import write_dir_atomic, write_json_atomic
from fmtrade.models.base import Covariates
from fmtrade.models.neural import NeuralForecaster
from fmtrade.models.objective import Objective

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"

#: Lags for hourly data: the last day, then 2/3/4 days and 1-4 weeks back.
HOURLY_LAGS: tuple[int, ...] = (*range(1, 25), 48, 72, 96, 168, 336, 504, 672)

#: peft LoRA targets: attention q/k/v/o and the SwiGLU gate/up/down projections.
LORA_TARGET_MODULES: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")

#: Uniform pairs drawn per Student-t sample for Bailey's polar rejection (acceptance pi/4 each);
#: all 12 rejected has probability 0.215**12 ~ 1e-8, and then the last pair is pulled into the disk.
_POLAR_TRIES = 12
#: Sampled values are clipped to +-_SAMPLE_CLIP scaled units (IQRs from the median) so a far
#: Student-t tail draw cannot overflow the next step's features.
_SAMPLE_CLIP = 1e4


class _Size(TypedDict):
    """The :class:`LagLlamaConfig` fields a zoo size sets."""

    n_embd: int
    n_layer: int
    n_head: int
    ffn_hidden: int
    context_length: int


_SIZES: dict[str, _Size] = {
    "tiny": {"n_embd": 96, "n_layer": 2, "n_head": 4, "ffn_hidden": 256, "context_length": 64},
    "small": {"n_embd": 256, "n_layer": 6, "n_head": 8, "ffn_hidden": 688, "context_length": 256},
    # The published checkpoint's transformer (one size): 8 layers, 9 heads of 16, context 32, the
    # Llama MLP width rounded up to a multiple of 256; fmtrade's hourly lags in place of its lag set.
    "published-small": {"n_embd": 144, "n_layer": 8, "n_head": 9, "ffn_hidden": 512, "context_length": 32},
    "base": {"n_embd": 144, "n_layer": 8, "n_head": 9, "ffn_hidden": 512, "context_length": 32},
}


@dataclass(frozen=True)
class LagLlamaConfig:
    """Architecture and data geometry of a Lag-Llama model (``config.json``)."""

    context_length: int = 64  # tokens of context the model attends over
    prediction_length: int = 24  # training target steps after the context
    lags: tuple[int, ...] = HOURLY_LAGS
    n_layer: int = 2
    n_head: int = 4
    n_embd: int = 64
    ffn_hidden: int = 176  # SwiGLU hidden width (~ 8/3 n_embd, as in Llama)
    rope_theta: float = 10000.0
    norm_eps: float = 1e-6
    dropout: float = 0.0
    min_scale: float = 1e-6  # scale floor, relative to 1 + |loc|
    model_type: str = "lag-llama"

    def __post_init__(self) -> None:
        object.__setattr__(self, "lags", tuple(sorted({int(lag) for lag in self.lags})))
        problems = []
        if not self.lags or self.lags[0] < 1:
            problems.append("lags must be positive integers")
        if self.context_length < 1 or self.prediction_length < 1:
            problems.append("context_length and prediction_length must be positive")
        if self.n_embd % self.n_head or (self.n_embd // self.n_head) % 2:
            problems.append("n_embd must split into n_head heads of even size (rotary embeddings)")
        if problems:
            raise ValueError(f"invalid LagLlamaConfig: {'; '.join(problems)}")

    @property
    def max_lag(self) -> int:
        return self.lags[-1]

    @property
    def feature_size(self) -> int:
        return 2 * len(self.lags) + 2

    @property
    def window_length(self) -> int:
        """Values per training window: lag history + context tokens + prediction targets."""
        return self.max_lag + self.context_length + self.prediction_length

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "lags": list(self.lags)}

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> LagLlamaConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(doc) - known)
        if unknown:
            raise ValueError(f"config.json: unknown LagLlamaConfig field(s) {', '.join(unknown)}")
        if doc.get("model_type", "lag-llama") != "lag-llama":
            raise ValueError(f"config.json: model_type {doc['model_type']!r} is not 'lag-llama'")
        return cls(**doc)


# Scaling and features ----------------------------------------------------------------------------


def robust_scale(values: torch.Tensor, observed: torch.Tensor, min_scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row median and interquartile range ``[B]`` of the observed values of ``values [B, N]``."""
    masked = torch.where(observed, values, torch.full_like(values, float("nan")))
    q = torch.nanquantile(masked, torch.tensor([0.25, 0.5, 0.75], dtype=values.dtype, device=values.device), dim=1)
    loc = torch.nan_to_num(q[1])
    scale = torch.nan_to_num(q[2] - q[0])
    return loc, torch.maximum(scale, min_scale * (1.0 + loc.abs()))


def lag_features(
    scaled: torch.Tensor,
    observed: torch.Tensor,
    targets: torch.Tensor,
    lags: torch.Tensor,
    stats: torch.Tensor,
) -> torch.Tensor:
    """Tokens ``[B, T, 2 L + 2]`` for target indices ``targets [T]`` (may be negative or past the end):
    the lagged scaled values (0 where unobserved or before the start), their observed flags, and
    the scaler statistics ``stats [B, 2]``."""
    idx = targets[:, None] - lags[None, :]  # [T, L]
    pad = max(0, -int(idx.min()))
    if pad:
        scaled = F.pad(scaled, (pad, 0))
        observed = F.pad(observed, (pad, 0))
    idx = (idx + pad).reshape(-1)
    shape = (scaled.shape[0], *targets.shape, lags.numel())
    ok = observed[:, idx].reshape(shape)
    vals = torch.where(ok, scaled[:, idx].reshape(shape), 0.0)
    summary = stats[:, None, :].expand(-1, targets.numel(), -1)
    return torch.cat([vals, ok.to(vals.dtype), summary.to(vals.dtype)], dim=-1)


def _stats(loc: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return torch.stack([torch.sign(loc) * torch.log1p(loc.abs()), torch.log(scale)], dim=-1)


# The transformer --------------------------------------------------------------------------------


def _rotary(x: torch.Tensor, positions: torch.Tensor, theta: float) -> torch.Tensor:
    """Rotate ``x [B, H, T, D]`` by ``positions [T]`` (half-split rotary embedding)."""
    half = x.shape[-1] // 2
    freqs = theta ** (-torch.arange(half, device=x.device, dtype=torch.float32) / half)
    angles = positions.to(torch.float32)[:, None] * freqs[None, :]
    cos, sin = angles.cos().to(x.dtype), angles.sin().to(x.dtype)
    a, b = x[..., :half], x[..., half:]
    return torch.cat([a * cos - b * sin, b * cos + a * sin], dim=-1)


class LayerCache(NamedTuple):
    """Keys/values of one layer while sampling: the context prefix once per row ``[B, h, P, d]``
    (shared by that row's sample paths) and the sampled steps per path ``[B*S, h, t, d]``."""

    prefix_k: torch.Tensor
    prefix_v: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor


class CausalSelfAttention(nn.Module):
    def __init__(self, config: LagLlamaConfig) -> None:
        super().__init__()
        d = config.n_embd
        self.n_head = config.n_head
        self.theta = config.rope_theta
        self.q_proj = nn.Linear(d, d, bias=False)
        self.k_proj = nn.Linear(d, d, bias=False)
        self.v_proj = nn.Linear(d, d, bias=False)
        self.o_proj = nn.Linear(d, d, bias=False)
        self.dropout = config.dropout

    def forward(
        self, x: torch.Tensor, positions: torch.Tensor, cache: LayerCache | None, window: int
    ) -> tuple[torch.Tensor, LayerCache]:
        """Causal attention over ``x [B, T, d]`` (no cache: training and prefill), or one decode
        step ``x [B*S, 1, d]`` against ``cache``, seeing the last ``window`` positions."""
        b, t, d = x.shape

        def heads(y: torch.Tensor) -> torch.Tensor:
            return y.view(b, t, self.n_head, d // self.n_head).transpose(1, 2)

        q = _rotary(heads(self.q_proj(x)), positions, self.theta)
        k = _rotary(heads(self.k_proj(x)), positions, self.theta)
        v = heads(self.v_proj(x))
        if cache is None:
            dropout = self.dropout if self.training else 0.0
            out = F.scaled_dot_product_attention(q, k, v, is_causal=t > 1, dropout_p=dropout)
            empty = k[:, :, :0]
            cache = LayerCache(k, v, empty, empty)
        else:
            if t != 1:
                raise ValueError("with a cache, decode one token at a time")
            cache = LayerCache(
                cache.prefix_k,
                cache.prefix_v,
                torch.cat([cache.k, k], dim=2)[:, :, -window:],
                torch.cat([cache.v, v], dim=2)[:, :, -window:],
            )
            out = _shared_prefix_attention(q, cache, positions[-1] - window)
        return self.o_proj(out.transpose(1, 2).reshape(b, t, d)), cache


def _shared_prefix_attention(q: torch.Tensor, cache: LayerCache, oldest: torch.Tensor) -> torch.Tensor:
    """Softmax attention of one query per path ``[B*S, h, 1, d]`` over its row's prefix (positions
    0..P-1; those <= ``oldest`` fall outside the window) and its own sampled steps. The prefix is
    read once per row instead of once per path."""
    rows, h, plen, dim = cache.prefix_k.shape
    paths = q.shape[0] // rows
    scale = dim**-0.5
    qr = q.view(rows, paths, h, dim).transpose(1, 2)  # [B, h, S, d]
    pre = qr @ cache.prefix_k.transpose(-1, -2) * scale  # [B, h, S, P]
    visible = torch.arange(plen, device=q.device) > oldest
    pre = pre.masked_fill(~visible, float("-inf"))
    own = (q @ cache.k.transpose(-1, -2)) * scale  # [B*S, h, 1, t]
    own = own.view(rows, paths, h, -1).transpose(1, 2)  # [B, h, S, t]
    weights = torch.softmax(torch.cat([pre, own], dim=-1), dim=-1)
    out = weights[..., :plen] @ cache.prefix_v  # [B, h, S, d]
    w_own = weights[..., plen:].transpose(1, 2).reshape(rows * paths, h, 1, -1)  # [B*S, h, 1, t]
    return out.transpose(1, 2).reshape(rows * paths, h, 1, dim) + w_own @ cache.v


class SwiGLU(nn.Module):
    def __init__(self, config: LagLlamaConfig) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(config.n_embd, config.ffn_hidden, bias=False)
        self.up_proj = nn.Linear(config.n_embd, config.ffn_hidden, bias=False)
        self.down_proj = nn.Linear(config.ffn_hidden, config.n_embd, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Block(nn.Module):
    def __init__(self, config: LagLlamaConfig) -> None:
        super().__init__()
        self.attn_norm = nn.RMSNorm(config.n_embd, eps=config.norm_eps)
        self.attn = CausalSelfAttention(config)
        self.mlp_norm = nn.RMSNorm(config.n_embd, eps=config.norm_eps)
        self.mlp = SwiGLU(config)
        self.drop = nn.Dropout(config.dropout)

    def forward(
        self, x: torch.Tensor, positions: torch.Tensor, cache: LayerCache | None, window: int
    ) -> tuple[torch.Tensor, LayerCache]:
        attn, cache = self.attn(self.attn_norm(x), positions, cache, window)
        x = x + self.drop(attn)
        return x + self.drop(self.mlp(self.mlp_norm(x))), cache


Cache = list[LayerCache]


class LagLlamaModel(nn.Module):
    """Decoder-only Llama over lag tokens with a Student-t head.

    ``forward(values, observed)`` returns the training loss (mean NLL), so a training
    loop (or a peft-wrapped model) calls ``model(values)`` on windows of
    ``config.window_length`` raw values.
    """

    lags: torch.Tensor  # the config's lags as a long tensor (a non-persistent buffer)

    def __init__(self, config: LagLlamaConfig) -> None:
        super().__init__()
        self.config = config
        self.input_proj = nn.Linear(config.feature_size, config.n_embd)
        self.layers = nn.ModuleList(Block(config) for _ in range(config.n_layer))
        self.norm = nn.RMSNorm(config.n_embd, eps=config.norm_eps)
        self.head = nn.Linear(config.n_embd, 3)  # Student-t df, loc, scale (before their domain maps)
        self.register_buffer("lags", torch.tensor(config.lags, dtype=torch.long), persistent=False)

    @property
    def span(self) -> int:
        """Tokens attended over in training, and the inference key/value cache limit."""
        return self.config.context_length + self.config.prediction_length

    def distribution(
        self, tokens: torch.Tensor, positions: torch.Tensor, cache: Cache | None = None
    ) -> tuple[tuple[torch.Tensor, torch.Tensor, torch.Tensor], Cache]:
        """Student-t ``(df, loc, scale)`` ``[B, T]`` (float32, scaled units) for ``tokens [B, T, F]``."""
        x = self.input_proj(tokens.to(self.input_proj.weight.dtype))
        new_cache = []
        for i, layer in enumerate(self.layers):
            x, layer_cache = layer(x, positions, None if cache is None else cache[i], self.span)
            new_cache.append(layer_cache)
        raw = self.head(self.norm(x)).float()
        df = 2.0 + F.softplus(raw[..., 0])
        scale = F.softplus(raw[..., 2]).clamp_min(1e-6)
        return (df, raw[..., 1], scale), new_cache

    def forward(self, values: torch.Tensor, observed: torch.Tensor | None = None) -> torch.Tensor:
        """Mean Student-t NLL of the next value over the last ``context_length + prediction_length``
        steps of ``values [B, N]`` (raw units; NaN or ``observed == False`` is missing). The scaler
        sees all but the last ``prediction_length`` values, as at forecast time."""
        cfg = self.config
        values = values.float()
        if values.ndim != 2 or values.shape[1] <= cfg.prediction_length + 1:
            raise ValueError(f"values must be [B, N] with N > prediction_length + 1, got {tuple(values.shape)}")
        obs = torch.isfinite(values) if observed is None else observed.bool() & torch.isfinite(values)
        n = values.shape[1]
        loc, scale = robust_scale(
            values[:, : n - cfg.prediction_length], obs[:, : n - cfg.prediction_length], cfg.min_scale
        )
        scaled = torch.where(obs, (values - loc[:, None]) / scale[:, None], 0.0)
        targets = torch.arange(n - self.span, n, device=values.device)
        tokens = lag_features(scaled, obs, targets, self.lags, _stats(loc, scale))
        (df, mu, sigma), _ = self.distribution(tokens, torch.arange(self.span, device=values.device))
        in_range = targets >= 0
        target = torch.where(in_range, scaled[:, targets.clamp_min(0)], 0.0)
        mask = obs[:, targets.clamp_min(0)] & in_range[None, :]
        nll = -torch.distributions.StudentT(df, mu, sigma).log_prob(target)
        return (nll * mask).sum() / mask.sum().clamp_min(1)

    @torch.no_grad()
    def sample(self, values: torch.Tensor, horizon: int, uniforms: torch.Tensor) -> torch.Tensor:
        """Sample paths ``[B, S, horizon]`` (raw units) continuing ``values [B, N]`` (NaN = missing),
        driven by ``uniforms [B, S, horizon, tries, 2]`` in [0, 1)."""
        cfg = self.config
        b, n = values.shape
        s = uniforms.shape[1]
        obs = torch.isfinite(values)
        loc, scale = robust_scale(values, obs, cfg.min_scale)
        stats = _stats(loc, scale)
        scaled = torch.where(obs, (values - loc[:, None]) / scale[:, None], 0.0)
        # Prefill: the context tokens and the token predicting x[n], once per row.
        targets = torch.arange(n - cfg.context_length, n + 1, device=values.device)
        positions = torch.arange(targets.numel(), device=values.device)
        (df, mu, sigma), cache = self.distribution(lag_features(scaled, obs, targets, self.lags, stats), positions)
        # Fan out to S paths per row (the prefix cache stays per row): history [B*S, n + horizon].
        cache = [c._replace(k=c.k.repeat_interleave(s, 0), v=c.v.repeat_interleave(s, 0)) for c in cache]
        history = F.pad(scaled, (0, horizon)).repeat_interleave(s, 0)
        seen = F.pad(obs, (0, horizon)).repeat_interleave(s, 0)
        stats = stats.repeat_interleave(s, 0)
        params = [p[:, -1].repeat_interleave(s, 0) for p in (df, mu, sigma)]
        u = uniforms.reshape(b * s, horizon, *uniforms.shape[3:])
        for h in range(horizon):
            draw = params[1] + params[2] * student_t_polar(params[0], u[:, h])
            history[:, n + h] = draw.clamp(-_SAMPLE_CLIP, _SAMPLE_CLIP)
            seen[:, n + h] = True
            if h + 1 == horizon:
                break
            target = torch.tensor([n + h + 1], device=values.device)
            tokens = lag_features(history, seen, target, self.lags, stats)
            pos = torch.tensor([cfg.context_length + 1 + h], device=values.device)
            (df_h, mu_h, sigma_h), cache = self.distribution(tokens, pos, cache)
            params = [df_h[:, 0], mu_h[:, 0], sigma_h[:, 0]]
        paths = history[:, n:].reshape(b, s, horizon).double()
        return paths * scale.double()[:, None, None] + loc.double()[:, None, None]

    # Native on-disk format -----------------------------------------------------------------------
    def save_pretrained(self, out_dir: str | Path) -> Path:
        """Write ``config.json`` + ``model.safetensors`` atomically (``out_dir`` must not exist)."""

        def write(tmp: Path) -> None:
            write_json_atomic(tmp / CONFIG_NAME, self.config.to_dict())
            save_file({k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}, tmp / WEIGHTS_NAME)

        return write_dir_atomic(Path(out_dir), write)

    @classmethod
    def from_pretrained(cls, path: str | Path) -> LagLlamaModel:
        """Load a checkpoint directory written by :meth:`save_pretrained` (strict: every weight must match)."""
        directory = Path(path)
        if not (directory / CONFIG_NAME).is_file() or not (directory / WEIGHTS_NAME).is_file():
            raise FileNotFoundError(f"{directory} is not a Lag-Llama checkpoint (needs {CONFIG_NAME} + {WEIGHTS_NAME})")
        config = LagLlamaConfig.from_dict(json.loads((directory / CONFIG_NAME).read_text()))
        model = cls(config)
        model.load_state_dict(load_file(directory / WEIGHTS_NAME), strict=True)
        return model.eval()


def student_t_polar(df: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
    """Standard Student-t draws ``[N]`` with ``df [N]`` from ``uniforms [N, tries, 2]`` by Bailey's
    polar method: the first pair (a, b) in the unit disk gives ``a sqrt(df (w^(-2/df) - 1) / w)``,
    ``w = a^2 + b^2``."""
    pairs = 2.0 * uniforms.to(torch.float64) - 1.0
    w = (pairs**2).sum(-1)
    accepted = (w <= 1.0) & (w > 0.0)
    first = torch.where(accepted.any(-1), accepted.to(torch.int8).argmax(-1), uniforms.shape[1] - 1)
    a = pairs[..., 0].gather(1, first[:, None])[:, 0]
    w = w.gather(1, first[:, None])[:, 0]
    a = torch.where(w > 1.0, a / w.sqrt(), a)  # all tries rejected (p ~ 1e-8): pull the pair into the disk
    w = w.clamp(1e-300, 1.0)
    nu = df.to(torch.float64)
    return (a * torch.sqrt(nu * (w ** (-2.0 / nu) - 1.0) / w)).to(df.dtype)


def build_lagllama_checkpoint(out_dir: Path, size: str = "tiny", seed: int = 0) -> Path:
    """A Lag-Llama checkpoint of the zoo ``size`` (hourly lags) with seeded initial weights."""
    out = Path(out_dir)
    if size not in _SIZES:
        raise InputError("size", f"{size!r} is not one of {', '.join(_SIZES)}")
    if out.exists():
        raise InputError("out_dir", f"{out} already exists; remove it or choose another directory")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LagLlamaModel(LagLlamaConfig(**_SIZES[size]))
    return model.save_pretrained(out)


# Forecaster --------------------------------------------------------------------------------------


class LagLlamaObjective(Objective["LagLlamaForecaster"]):
    """The model's own Student-t NLL (:meth:`LagLlamaModel.forward`) over context + prediction tokens."""

    def _native(self, forecaster: LagLlamaForecaster) -> tuple[int, int]:
        config = forecaster.module.config
        return config.max_lag + config.context_length, config.prediction_length

    def loss(self, model: torch.nn.Module, windows: torch.Tensor) -> torch.Tensor:
        return model(windows.to(self.device, torch.float32))


class LagLlamaForecaster(NeuralForecaster):
    """Lag-Llama sample-path forecasts: ``mean`` is the sample mean, quantiles are empirical
    sample quantiles (linear interpolation between order statistics, so levels below
    ``1 / num_samples`` or above ``1 - 1 / num_samples`` are the extreme samples).

    Options: ``num_samples`` (paths per row, default 100), ``max_paths`` (rows x samples per
    model call, bounds memory; default 8192), ``adapter`` (peft LoRA directory, merged at load).
    """

    family = "lagllama"
    stochastic = True
    min_context = 2
    lora_target_modules: ClassVar[tuple[str, ...]] = LORA_TARGET_MODULES
    objective_class = LagLlamaObjective
    module: LagLlamaModel

    def _take_options(self, options: dict[str, Any]) -> None:
        self.num_samples = int(options.pop("num_samples", 100))
        self.max_paths = int(options.pop("max_paths", 8192))
        if self.num_samples < 1:
            raise InputError("num_samples", f"must be positive, got {self.num_samples}")
        if self.max_paths < 1:
            raise InputError("max_paths", f"must be positive, got {self.max_paths}")

    def _load(self, source: str) -> torch.nn.Module:
        return LagLlamaModel.from_pretrained(source).to(dtype=self.torch_dtype)

    def _limits(self) -> tuple[int, int]:
        cfg = self.module.config
        return cfg.context_length + cfg.max_lag, 1024  # sampling is autoregressive: no native limit

    def save_checkpoint(self, out_dir: Path) -> Path:
        return self.module.save_pretrained(out_dir)

    def _predict(
        self,
        contexts: list[np.ndarray],
        horizon: int,
        quantile_levels: tuple[float, ...],
        covariates: list[Covariates | None],
        seeds: list[int],
    ) -> tuple[np.ndarray, np.ndarray]:
        rows = max(1, self.max_paths // self.num_samples)
        means, quants = [], []
        for start in range(0, len(contexts), rows):
            paths = self.sample_paths(contexts[start : start + rows], horizon, seeds[start : start + rows])
            means.append(paths.mean(axis=1))
            quants.append(np.moveaxis(np.quantile(paths, quantile_levels, axis=1), 0, -1))
        return np.concatenate(means), np.concatenate(quants)

    def sample_paths(self, contexts: list[np.ndarray], horizon: int, seeds: list[int]) -> np.ndarray:
        """``[b, num_samples, horizon]`` sample paths in price units (rows left-padded with NaN)."""
        longest = max(c.size for c in contexts)
        values = np.full((len(contexts), longest), np.nan)
        for i, c in enumerate(contexts):
            values[i, longest - c.size :] = c
        uniforms = torch.stack(
            [
                torch.rand(
                    (self.num_samples, horizon, _POLAR_TRIES, 2),
                    generator=torch.Generator().manual_seed(int(seed)),
                    dtype=torch.float64,
                )
                for seed in seeds
            ]
        )
        paths = self.module.sample(
            torch.as_tensor(values, dtype=torch.float32, device=self.device), horizon, uniforms.to(self.device)
        )
        return paths.cpu().numpy()
