"""What a family's training objective is: its loss on raw windows, and the window geometry it trains on.

The families' own objectives live beside their adapters (``chronos.py``, ``timesfm.py``,
``lagllama.py``), the way chronos-forecasting keeps a model's ``fit`` beside its pipeline;
:mod:`fmtrade.training` only runs them.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import TYPE_CHECKING, Generic, TypeVar

import torch

if TYPE_CHECKING:
    from fmtrade.models.neural import NeuralForecaster

#: The forecaster class an objective trains (its module and library objects are typed by it).
F = TypeVar("F", bound="NeuralForecaster")

#: Longest context the training windows use (the zoo models' context length).
MAX_TRAIN_CONTEXT = 512


@dataclass(frozen=True)
class Geometry:
    """Training windows: ``context`` values in, ``horizon`` values scored."""

    context: int
    horizon: int

    @property
    def length(self) -> int:
        return self.context + self.horizon


class Objective(abc.ABC, Generic[F]):
    """A family's own loss on windows ``[B, context + horizon]`` of raw values (NaN = missing)."""

    def __init__(self, forecaster: F, context: int | None) -> None:
        self.device = torch.device(forecaster.device)
        native_context, horizon = self._native(forecaster)
        self.geometry = Geometry(min(context or native_context, native_context), horizon)

    @abc.abstractmethod
    def _native(self, forecaster: F) -> tuple[int, int]:
        """(longest training context, training horizon) of the family."""

    @abc.abstractmethod
    def loss(self, model: torch.nn.Module, windows: torch.Tensor) -> torch.Tensor:
        """Scalar loss; ``model`` is the module to call (possibly peft- or DDP-wrapped)."""

    def _split(self, windows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        w = windows.to(self.device, torch.float32)
        return w[:, : self.geometry.context], w[:, self.geometry.context :]
