"""Chronos family adapters (Chronos T5 token models, Chronos-Bolt, Chronos-2) and zoo builders.

Everything goes through ``chronos-forecasting``: weights load with
``chronos.BaseChronosPipeline.from_pretrained`` (local directory or hub id) and
forecasts come from the pipelines' own ``predict`` methods, so a hub checkpoint
and an fmtrade zoo checkpoint take exactly the same path.

Design notes (also in docs/MODELS.md):

* Mixed-length batches are passed as a list of 1-D tensors; the library left-pads
  them with NaN and all three families mask NaNs natively (padding and gaps alike).
* Bolt and Chronos-2 output fixed quantile levels. Other levels are linearly
  interpolated between the native ones with ``chronos.utils.interpolate_quantiles``;
  outside the native range they are clamped to the outermost native quantile (the
  library's own behaviour). Their point forecast ``mean`` is the model's median,
  as in the library's ``predict_quantiles``.
* Chronos T5 samples token paths: ``mean`` is the sample mean and quantiles are
  empirical sample quantiles. Sampling is driven by one ``torch.Generator`` per
  row (Gumbel-max over the temperature/top-k/top-p warped logits), so a row's
  forecast depends only on its context and seed, not on the rest of the batch.
  Each context is encoded once; only the encoder output is repeated for the
  sample paths the decoder draws.
* Horizons beyond the model's native prediction length use the library's
  autoregressive unrolling; ``max_horizon`` allows ``LONG_HORIZON_FACTOR`` times the
  native length and no more, because quality degrades with every unrolled block.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from chronos import BaseChronosPipeline, Chronos2Pipeline, ChronosBoltPipeline, ChronosPipeline
from chronos.chronos import ChronosModel
from chronos.chronos2 import Chronos2Model
from chronos.chronos2.config import Chronos2CoreConfig
from chronos.chronos_bolt import ChronosBoltModelForForecasting
from chronos.utils import interpolate_quantiles
from transformers import GenerationConfig, PreTrainedModel, T5Config, T5ForConditionalGeneration
from transformers.generation.logits_process import (
    LogitsProcessor,
    LogitsProcessorList,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)
from transformers.modeling_outputs import BaseModelOutput

from fmtrade.errors import InputError
from fmtrade.io import write_dir_atomic
from fmtrade.models.base import Covariates
from fmtrade.models.checkpoints import ModelLoadError
from fmtrade.models.neural import NeuralForecaster
from fmtrade.models.objective import MAX_TRAIN_CONTEXT, Objective

#: Longest horizon, as a multiple of the model's native prediction length (autoregressive unrolling).
LONG_HORIZON_FACTOR = 4

#: peft LoRA targets: attention q/k/v/o and feed-forward wi/wo projections. T5 (Chronos, and
#: Chronos-Bolt's encoder/decoder) and Chronos-2's MHA/MLP layers use the same names.
LORA_TARGET_MODULES: tuple[str, ...] = ("q", "k", "v", "o", "wi", "wo")

#: Transformer dimensions per zoo size (d_ff = 4 d_model, ReLU feed-forward like the published models).
_SIZES: dict[str, dict[str, int]] = {
    "tiny": {"d_model": 64, "d_kv": 16, "d_ff": 256, "num_layers": 2, "num_heads": 4},
    "small": {"d_model": 256, "d_kv": 64, "d_ff": 1024, "num_layers": 4, "num_heads": 4},
}
#: Published sizes (random-initialised at the published checkpoints' dimensions and geometry, for GPUs):
#: ``published-small`` is chronos-t5-small / chronos-bolt-small / chronos-2-small, ``base`` is
#: chronos-t5-base / chronos-bolt-base / chronos-2 (120M). fmtrade's own ``small`` above has the
#: dimensions of the published *tiny* T5 models.
_PUBLISHED: dict[str, dict[str, int]] = {
    "published-small": {"d_model": 512, "d_kv": 64, "d_ff": 2048, "num_layers": 6, "num_heads": 8},
    "base": {"d_model": 768, "d_kv": 64, "d_ff": 3072, "num_layers": 12, "num_heads": 12},
}
#: The published configs' context lengths: Chronos T5 512, Chronos-Bolt 2048, Chronos-2 8192.
_PUBLISHED_CONTEXT = {"chronos": 512, "chronos-bolt": 2048, "chronos2": 8192}
_CONTEXT_LENGTH = 512  # zoo checkpoints: enough for three weeks of hourly bars
#: The token model's context: its T5 encoder attends over every bar (quadratic), so a 512-bar
#: training step takes ~2.6 s on 2 CPU cores against 0.37 s at 128. In the same 2 minutes of
#: pretraining that is 45 steps (val loss 4.9, forecasts spread over the whole token range) against
#: ~340 (val loss 1.7); evaluated on BTC 2023 at their own context, WQL 246x -> 2.7x the random walk
#: (docs/RESULTS.md). Chronos truncates longer contexts itself.
_TOKEN_CONTEXT_LENGTH = 128
_BOLT_QUANTILES = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]  # the Bolt heuristics assume this even grid
_CHRONOS2_QUANTILES = [0.01, 0.05, *(round(0.1 + 0.05 * i, 2) for i in range(17)), 0.95, 0.99]


class _ChronosFamily(NeuralForecaster):
    """Pipeline loading, limits, native saving and native-quantile handling shared by the family."""

    pipeline_class: ClassVar[type[BaseChronosPipeline]]
    lora_target_modules: ClassVar[tuple[str, ...]] = LORA_TARGET_MODULES
    pipeline: BaseChronosPipeline
    module: PreTrainedModel  # the pipeline's inner transformers model

    def _load(self, source: str) -> torch.nn.Module:
        self.pipeline = self._pipeline(source)
        return self.pipeline.inner_model

    def _pipeline(self, source: str) -> BaseChronosPipeline:
        """The library's pipeline for ``source``, refused when it is another family's."""
        pipeline = BaseChronosPipeline.from_pretrained(source, dtype=self.torch_dtype)
        if not isinstance(pipeline, self.pipeline_class):
            raise ModelLoadError(
                f"{self.name}: {source} holds a {type(pipeline).__name__} checkpoint, "
                f"but adapter {self.family!r} needs a {self.pipeline_class.__name__} one"
            )
        return pipeline

    def _limits(self) -> tuple[int, int]:
        return int(self.pipeline.model_context_length), int(self.pipeline.model_prediction_length) * LONG_HORIZON_FACTOR

    def save_checkpoint(self, out_dir: Path) -> Path:
        return write_dir_atomic(out_dir, lambda tmp: self.module.save_pretrained(tmp, safe_serialization=True))

    @staticmethod
    def _tensors(contexts: list[np.ndarray]) -> list[torch.Tensor]:
        """Rows as float32 tensors; the pipelines left-pad them with NaN and mask NaNs. Copied:
        rows read from Ray's object store are read-only views, which torch must not share."""
        return [torch.from_numpy(np.array(c, dtype=np.float32)) for c in contexts]

    @staticmethod
    def _from_native(
        native: torch.Tensor, native_levels: list[float], levels: tuple[float, ...]
    ) -> tuple[np.ndarray, np.ndarray]:
        """``native`` ``[b, Qn, H]`` at ``native_levels`` -> (median ``[b, H]``, ``[b, H, Q]`` at ``levels``)."""
        values = native.swapaxes(1, 2).float()
        out = interpolate_quantiles([0.5, *levels], native_levels, values).numpy()
        return out[..., 0], out[..., 1:]


# Training objectives --------------------------------------------------------------------------


class ChronosTokenObjective(Objective["ChronosForecaster"]):
    """Chronos T5: the library's tokenizer turns context and target into token ids (mean scaling,
    uniform bins); the loss is the T5 model's own cross-entropy over the target tokens (``labels``;
    missing values are not scored)."""

    def _native(self, forecaster: ChronosForecaster) -> tuple[int, int]:
        self.tokenizer = forecaster.pipeline.tokenizer
        config = forecaster.pipeline.model.config
        return min(config.context_length, MAX_TRAIN_CONTEXT), config.prediction_length

    def loss(self, model: torch.nn.Module, windows: torch.Tensor) -> torch.Tensor:
        context, target = self._split(windows.cpu())
        ids, mask, scale = self.tokenizer.context_input_transform(context.cpu())
        labels, labels_mask = self.tokenizer.label_input_transform(target.cpu(), scale)
        labels[labels_mask == 0] = -100  # missing target values are not scored
        out = model(input_ids=ids.to(self.device), attention_mask=mask.to(self.device), labels=labels.to(self.device))
        return out.loss


class ChronosBoltObjective(Objective["ChronosBoltForecaster"]):
    """Chronos-Bolt: the model's own quantile (pinball) loss, ``forward(context, target=...)``."""

    def _native(self, forecaster: ChronosBoltForecaster) -> tuple[int, int]:
        config = forecaster.module.chronos_config
        return min(config.context_length, MAX_TRAIN_CONTEXT), config.prediction_length

    def loss(self, model: torch.nn.Module, windows: torch.Tensor) -> torch.Tensor:
        context, target = self._split(windows)
        return model(context=context, target=target).loss


class Chronos2Objective(Objective["Chronos2Forecaster"]):
    """Chronos-2: the model's own quantile loss, ``forward(context, future_target=...)``, every row
    its own group (univariate forecasting)."""

    def _native(self, forecaster: Chronos2Forecaster) -> tuple[int, int]:
        config = forecaster.module.chronos_config
        self.patch = config.output_patch_size
        return min(config.context_length, MAX_TRAIN_CONTEXT), config.output_patch_size * config.max_output_patches

    def loss(self, model: torch.nn.Module, windows: torch.Tensor) -> torch.Tensor:
        context, target = self._split(windows)
        groups = torch.arange(context.shape[0], device=self.device)
        patches = math.ceil(target.shape[1] / self.patch)
        return model(context=context, group_ids=groups, num_output_patches=patches, future_target=target).loss


# Chronos (T5 token model) -------------------------------------------------------------------


class _GumbelMaxSampler(LogitsProcessor):
    """Turns greedy decoding into sampling with per-row random streams.

    Scores are warped exactly as ``generate(do_sample=True)`` would (temperature, top-k,
    top-p), then Gumbel noise drawn from row ``i``'s generator is added to the scores
    of that row's ``num_samples`` sequences; the argmax greedy decoding takes is then a
    sample from the warped distribution (the Gumbel-max trick). The noise is drawn into one
    buffer and transformed in place: per-row tensors joined with ``cat`` plus a fresh tensor per
    operation took 1.8x as long per step at 5120 sequences on an idle 2-core CPU, ~9x under load.
    """

    def __init__(self, generators: list[torch.Generator], num_samples: int, warpers: LogitsProcessorList) -> None:
        self.generators = generators
        self.num_samples = num_samples
        self.warpers = warpers

    def __call__(self, input_ids: torch.LongTensor, scores: torch.Tensor) -> torch.Tensor:
        scores = self.warpers(input_ids, scores)
        noise = torch.empty(scores.shape, device=scores.device, dtype=torch.float32)
        for generator, rows in zip(self.generators, noise.split(self.num_samples), strict=True):
            torch.rand(rows.shape, generator=generator, out=rows)
        tiny = torch.finfo(torch.float32).tiny
        return scores - noise.clamp_min_(tiny).log_().neg_().log_()


class _SeededChronosModel(ChronosModel):
    """``ChronosModel`` whose sampling follows ``generators`` (one per batch row), set before each predict."""

    def __init__(self, config: Any, model: PreTrainedModel) -> None:
        super().__init__(config, model)
        self.generators: list[torch.Generator] = []

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        prediction_length: int | None = None,
        num_samples: int | None = None,
        temperature: float | None = None,
        top_k: int | None = None,
        top_p: float | None = None,
    ) -> torch.Tensor:
        cfg = self.config
        length = prediction_length or cfg.prediction_length
        samples = num_samples or cfg.num_samples
        if len(self.generators) != input_ids.size(0):
            raise RuntimeError(f"{len(self.generators)} generators for a batch of {input_ids.size(0)} rows")
        warpers = LogitsProcessorList()
        temperature = cfg.temperature if temperature is None else temperature
        top_k = cfg.top_k if top_k is None else top_k
        top_p = cfg.top_p if top_p is None else top_p
        if temperature != 1.0:
            warpers.append(TemperatureLogitsWarper(temperature))
        if top_k:
            warpers.append(TopKLogitsWarper(top_k))
        if top_p < 1.0:
            warpers.append(TopPLogitsWarper(top_p))
        inputs = self._sample_inputs(input_ids, attention_mask, samples)
        preds = self.model.generate(
            **inputs,
            generation_config=GenerationConfig(
                min_new_tokens=length,
                max_new_tokens=length,
                do_sample=False,
                eos_token_id=cfg.eos_token_id,
                pad_token_id=cfg.pad_token_id,
                decoder_start_token_id=cfg.pad_token_id,
            ),
            logits_processor=LogitsProcessorList([_GumbelMaxSampler(self.generators, samples, warpers)]),
        )
        preds = preds[..., 1:] if cfg.model_type == "seq2seq" else preds[..., -length:]
        return preds.reshape(input_ids.size(0), samples, -1)

    @torch.no_grad()
    def _sample_inputs(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, samples: int) -> dict[str, Any]:
        """``generate`` inputs for ``samples`` paths per row, in row-major order (row 0's paths first).

        A seq2seq model encodes each context once and only the encoder output is repeated per
        path: repeating the contexts before the encoder ran the encoder ``samples`` times per row
        (2.1x the time and 1.6x the peak memory for 128 rows of 512 tokens, bench/chronos_sampling.py).
        A decoder-only model has no encoder, so its contexts are repeated.
        """
        mask = attention_mask.repeat_interleave(samples, dim=0)
        if self.config.model_type != "seq2seq":
            return {"input_ids": input_ids.repeat_interleave(samples, dim=0), "attention_mask": mask}
        encoded = self.model.get_encoder()(input_ids=input_ids, attention_mask=attention_mask, return_dict=True)
        hidden = encoded.last_hidden_state.repeat_interleave(samples, dim=0)
        return {"encoder_outputs": BaseModelOutput(last_hidden_state=hidden), "attention_mask": mask}


class ChronosForecaster(_ChronosFamily):
    """Chronos T5 token model (``ChronosPipeline``): sampled paths, per-row seeded.

    Option ``num_samples`` (default: the checkpoint's ``num_samples``) sets the paths per row.
    """

    family = "chronos"
    stochastic = True
    pipeline_class = ChronosPipeline
    objective_class = ChronosTokenObjective
    pipeline: ChronosPipeline

    def _take_options(self, options: dict[str, Any]) -> None:
        self._num_samples = options.pop("num_samples", None)
        if self._num_samples is not None and (not isinstance(self._num_samples, int) or self._num_samples < 2):
            raise InputError("options.num_samples", f"must be an integer >= 2, got {self._num_samples!r}")

    def _pipeline(self, source: str) -> BaseChronosPipeline:
        stock = super()._pipeline(source)
        seeded = _SeededChronosModel(stock.model.config, stock.model.model)
        return ChronosPipeline(tokenizer=stock.tokenizer, model=seeded)

    def _predict(
        self,
        contexts: list[np.ndarray],
        horizon: int,
        quantile_levels: tuple[float, ...],
        covariates: list[Covariates | None],
        seeds: list[int],
    ) -> tuple[np.ndarray, np.ndarray]:
        self.pipeline.model.generators = [torch.Generator(device=self.device).manual_seed(s % 2**64) for s in seeds]
        quantiles, mean = self.pipeline.predict_quantiles(
            self._tensors(contexts),
            prediction_length=horizon,
            quantile_levels=list(quantile_levels),
            num_samples=self._num_samples,
        )
        return mean.numpy(), quantiles.numpy()


# Chronos-Bolt --------------------------------------------------------------------------------


class ChronosBoltForecaster(_ChronosFamily):
    """Chronos-Bolt (``ChronosBoltPipeline``): direct multi-step quantiles, deterministic."""

    family = "chronos-bolt"
    pipeline_class = ChronosBoltPipeline
    objective_class = ChronosBoltObjective
    module: ChronosBoltModelForForecasting

    def _pipeline(self, source: str) -> BaseChronosPipeline:
        pipeline = super()._pipeline(source)
        # Bolt's input embedding is ``shared`` (like T5's); transformers 5 cannot find it on its own,
        # and peft needs it to check tied weights before injecting LoRA layers.
        pipeline.inner_model._input_embed_layer = "shared"
        return pipeline

    def _predict(
        self,
        contexts: list[np.ndarray],
        horizon: int,
        quantile_levels: tuple[float, ...],
        covariates: list[Covariates | None],
        seeds: list[int],
    ) -> tuple[np.ndarray, np.ndarray]:
        native = self.pipeline.predict(self._tensors(contexts), prediction_length=horizon)
        return self._from_native(native, self.pipeline.quantiles, quantile_levels)


# Chronos-2 -----------------------------------------------------------------------------------


class Chronos2Forecaster(_ChronosFamily):
    """Chronos-2 (``Chronos2Pipeline``): quantiles, with volume/funding as past covariates.

    Rows are forecast independently (no cross-learning); rows are grouped by which
    covariates they carry because one pipeline call needs one input schema. Covariate
    names other than ``covariates`` are ignored, like every other model ignores them.
    """

    family = "chronos2"
    covariates = ("volume", "funding")
    pipeline_class = Chronos2Pipeline
    objective_class = Chronos2Objective
    module: Chronos2Model

    def _native_input(self, context: np.ndarray, covs: Covariates | None, keys: tuple[str, ...]) -> Any:
        """The pipeline's input for one row: a tensor, or with covariate ``keys`` (all held by
        ``covs``, as :meth:`_predict` groups rows) a dict of the target and those covariates."""
        if not keys:
            return self._tensors([context])[0]
        if covs is None:
            raise ValueError(f"covariates {', '.join(keys)} asked for a row that has none")
        return {
            "target": context.astype(np.float32),
            "past_covariates": {k: np.asarray(covs[k], dtype=np.float32) for k in keys},
        }

    def _predict(
        self,
        contexts: list[np.ndarray],
        horizon: int,
        quantile_levels: tuple[float, ...],
        covariates: list[Covariates | None],
        seeds: list[int],
    ) -> tuple[np.ndarray, np.ndarray]:
        groups: dict[tuple[str, ...], list[int]] = {}
        for row, covs in enumerate(covariates):
            groups.setdefault(tuple(k for k in self.covariates if covs and k in covs), []).append(row)
        mean = np.empty((len(contexts), horizon))
        quantiles = np.empty((len(contexts), horizon, len(quantile_levels)))
        for keys, rows in groups.items():
            inputs = [self._native_input(contexts[r], covariates[r], keys) for r in rows]
            native = self.pipeline.predict(
                inputs,
                prediction_length=horizon,
                batch_size=len(rows) * (1 + len(keys)),
                context_length=self.max_context,
            )
            mean[rows], quantiles[rows] = self._from_native(torch.cat(native), self.pipeline.quantiles, quantile_levels)
        return mean, quantiles


# Zoo builders --------------------------------------------------------------------------------


def _dims(size: str) -> dict[str, int]:
    sizes = {**_SIZES, **_PUBLISHED}
    if size not in sizes:
        raise InputError("size", f"{size!r} is not one of {', '.join(sizes)}")
    return sizes[size]


def _context(family: str, size: str, zoo_context: int) -> int:
    """The zoo's context for fmtrade's own sizes, the published config's for a published size."""
    return _PUBLISHED_CONTEXT[family] if size in _PUBLISHED else zoo_context


def _save_seeded(make: Callable[[], PreTrainedModel], out_dir: Path, seed: int) -> Path:
    """Build ``make()`` under ``seed`` (global RNG untouched) and save it (safetensors) to ``out_dir``
    through a scratch directory renamed into place when complete."""
    out = Path(out_dir)
    if out.exists():
        raise InputError("out_dir", f"{out} already exists; remove it or choose another directory")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = make()
    return write_dir_atomic(out, lambda build: model.save_pretrained(build, safe_serialization=True))


def _t5_config(dims: dict[str, int], chronos_config: dict[str, Any], pipeline_class: str, **extra: Any) -> T5Config:
    """The T5 backbone both T5-based families share (the token model adds its vocabulary size)."""
    # T5Config keeps extra keyword arguments as config attributes; its typed signature lists only its own.
    make_config: Callable[..., T5Config] = T5Config
    return make_config(
        num_decoder_layers=dims["num_layers"],
        feed_forward_proj="relu",
        pad_token_id=0,
        eos_token_id=1,
        decoder_start_token_id=0,
        chronos_config=chronos_config,
        chronos_pipeline_class=pipeline_class,
        **dims,
        **extra,
    )


def build_chronos_checkpoint(out_dir: Path, size: str = "tiny", seed: int = 0) -> Path:
    """Chronos T5 token model (seq2seq) with the published tokenizer: 4096 mean-scaled uniform
    bins on [-15, 15], EOS token, 20 sample paths, top-k 50; a 128-bar context (see
    ``_TOKEN_CONTEXT_LENGTH``), the published 512 at a published size."""
    dims = _dims(size)
    chronos_config = {
        "tokenizer_class": "MeanScaleUniformBins",
        "tokenizer_kwargs": {"low_limit": -15.0, "high_limit": 15.0},
        "context_length": _context("chronos", size, _TOKEN_CONTEXT_LENGTH),
        "prediction_length": 64,
        "n_tokens": 4096,
        "n_special_tokens": 2,
        "pad_token_id": 0,
        "eos_token_id": 1,
        "use_eos_token": True,
        "model_type": "seq2seq",
        "num_samples": 20,
        "temperature": 1.0,
        "top_k": 50,
        "top_p": 1.0,
    }
    config = _t5_config(dims, chronos_config, "ChronosPipeline", vocab_size=chronos_config["n_tokens"])
    return _save_seeded(lambda: T5ForConditionalGeneration(config), out_dir, seed)


def build_chronos_bolt_checkpoint(out_dir: Path, size: str = "tiny", seed: int = 0) -> Path:
    """Chronos-Bolt: patches of 16, [REG] token, 64-step direct output at the deciles. A published
    size has the published context (2048) and embedding table (2 rows: pad and [REG])."""
    dims = _dims(size)
    chronos_config = {
        "context_length": _context("chronos-bolt", size, _CONTEXT_LENGTH),
        "prediction_length": 64,
        "input_patch_size": 16,
        "input_patch_stride": 16,
        "quantiles": _BOLT_QUANTILES,
        "use_reg_token": True,
    }
    extra = {"vocab_size": 2} if size in _PUBLISHED else {}  # fmtrade's sizes keep T5's default table
    config = _t5_config(dims, chronos_config, "ChronosBoltPipeline", **extra)
    return _save_seeded(lambda: ChronosBoltModelForForecasting(config), out_dir, seed)


def build_chronos2_checkpoint(out_dir: Path, size: str = "tiny", seed: int = 0) -> Path:
    """Chronos-2: patches of 16, [REG] token, arcsinh scaling, 21 quantiles (0.01..0.99) like the
    published model, up to 4 output patches (64 steps) per forward pass; a published size has the
    published 8192 context and 64 output patches."""
    dims = _dims(size)
    context = _context("chronos2", size, _CONTEXT_LENGTH)
    chronos_config = {
        "context_length": context,
        "input_patch_size": 16,
        "input_patch_stride": 16,
        "output_patch_size": 16,
        "quantiles": _CHRONOS2_QUANTILES,
        "use_reg_token": True,
        "use_arcsinh": True,
        "max_output_patches": 64 if size in _PUBLISHED else 4,
        "time_encoding_scale": context,
    }
    config = Chronos2CoreConfig(
        chronos_config=chronos_config,
        chronos_pipeline_class="Chronos2Pipeline",
        architectures=["Chronos2Model"],
        **dims,
    )
    return _save_seeded(lambda: Chronos2Model(config), out_dir, seed)
