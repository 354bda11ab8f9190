"""The one base of the neural adapters (Chronos family, TimesFM, Lag-Llama).

Construction is the same for every family and happens here, once: options are taken
and checked, device and dtype resolved, the checkpoint loaded (with the "build the
zoo" hint on failure), the module placed on its device, a peft LoRA adapter merged on
that same device, and the context and horizon limits read from the loaded model.
A family supplies its loader, its limits, its training objective and its native saver.
"""

from __future__ import annotations

import abc
from pathlib import Path
from typing import Any, ClassVar

import torch

from fmtrade.errors import InputError
from fmtrade.models.base import NEURAL_WORKING_RANGE, Forecaster
from fmtrade.models.checkpoints import apply_lora_adapter, load_with_hint
from fmtrade.models.device import resolve_device, resolve_dtype
from fmtrade.models.objective import Objective


class NeuralForecaster(Forecaster):
    """A torch foundation model behind the Forecaster contract.

    Options every family accepts: ``adapter`` (a peft LoRA directory, merged into the
    weights at load); families add their own through :meth:`_take_options`.
    """

    working_range = NEURAL_WORKING_RANGE
    #: peft LoRA targets (attention and feed-forward projections) fine-tuning uses by default.
    lora_target_modules: ClassVar[tuple[str, ...]]
    #: The family's own training loss (:meth:`objective`).
    objective_class: ClassVar[type[Objective[Any]]]
    #: What ``dtype="auto"`` resolves through (``auto``: bfloat16 on GPUs that support it).
    auto_dtype: ClassVar[str] = "auto"

    module: torch.nn.Module
    torch_dtype: torch.dtype

    def __init__(
        self,
        name: str,
        checkpoint: str,
        *,
        device: str = "auto",
        dtype: str = "auto",
        max_batch_size: int = 256,
        context_length: int | None = None,
        **options: Any,
    ) -> None:
        self.name = name
        adapter = options.pop("adapter", None)
        self._take_options(options)
        if options:
            raise InputError("options", f"unknown option(s) for {self.family}: {', '.join(sorted(options))}")
        if context_length is not None and context_length < 1:
            raise InputError("context_length", f"must be positive, got {context_length}")
        self.device = resolve_device(device)
        self.torch_dtype = resolve_dtype(self.auto_dtype if dtype == "auto" else dtype, self.device)
        module = load_with_hint(checkpoint, self._load, name).to(self.device)
        if adapter is not None:
            module = apply_lora_adapter(module, adapter, self.device)
        self.module = module.eval()
        limit, self.max_horizon = self._limits()
        self.max_context = min(context_length or limit, limit)
        self.max_batch_size = int(max_batch_size)

    def _take_options(self, options: dict[str, Any]) -> None:
        """Pop and check the family's own options (what is left is reported as unknown)."""

    @abc.abstractmethod
    def _load(self, source: str) -> torch.nn.Module:
        """Load ``source`` (directory or hub id) through the family's library, in ``torch_dtype``
        where the family computes in it; keep any wrapper it needs and return the torch module."""

    @abc.abstractmethod
    def _limits(self) -> tuple[int, int]:
        """(longest context, longest horizon) the loaded model forecasts."""

    @abc.abstractmethod
    def save_checkpoint(self, out_dir: Path) -> Path:
        """Write :attr:`module` in the family's native on-disk format (what :meth:`_load` reads),
        atomically; ``out_dir`` must not exist."""

    def objective(self, context: int | None = None) -> Objective[Any]:
        """The family's training loss on this forecaster's module, on windows of at most ``context`` values."""
        return self.objective_class(self, context)
