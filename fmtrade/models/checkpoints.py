"""Where a model's weights come from: a local directory (the zoo) or a hub id.

Loading always goes through the model library's own ``from_pretrained``; this
module only decides which string to hand it, refuses a local checkpoint whose weight
files are damaged (a safetensors file whose header does not describe exactly its bytes, e.g.
truncated by a full disk or an interrupted copy; a file that differs from the sha256 its stamp
records: shipped checkpoints carry them) with the file's name and the rebuild command, and
turns a failed hub download into a message that points at the offline zoo instead of
falling back silently.
"""

from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from safetensors import SafetensorError

from fmtrade.errors import FmtradeError, InputError
from fmtrade.models.recipes import RECIPE_FILE

if TYPE_CHECKING:  # torch is imported by the model adapters, not by registry listing
    import torch

T = TypeVar("T")
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")
#: The file that makes a directory a peft adapter (published last: see fmtrade.io.upload_dir).
ADAPTER_CONFIG = "adapter_config.json"


class ModelLoadError(FmtradeError):
    """A checkpoint could not be loaded (missing local directory, or hub unreachable)."""


def is_local(checkpoint: str) -> bool:
    """Paths (absolute, relative, ~) are local; ``owner/name`` that does not exist on disk is a hub id."""
    path = Path(checkpoint).expanduser()
    return path.exists() or checkpoint.startswith((".", "/", "~"))


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def weight_hashes(checkpoint: Path) -> dict[str, str]:
    """``{file name: sha256}`` of every weight file of a checkpoint directory."""
    return {p.name: sha256(p) for p in sorted(checkpoint.iterdir()) if p.suffix in WEIGHT_SUFFIXES}


def stamp_of(checkpoint: Path) -> dict[str, Any]:
    """The zoo stamp of a checkpoint directory (``{}`` when it has none)."""
    path = checkpoint / RECIPE_FILE
    return json.loads(path.read_text()) if path.is_file() else {}


def rebuild_hint(model: str | None) -> str:
    only = f" --only {model}" if model else ""
    return f"rebuild it with `fmtrade models build{only} --force`"


def safetensors_problem(path: Path) -> str | None:
    """Why ``path`` is not a complete safetensors file, or None. The format is an 8-byte header
    length, a JSON header giving each tensor's byte range, then the data: the ranges must end
    exactly at the end of the file, so any truncation is caught without reading the tensors."""
    size = path.stat().st_size
    if size < 8:
        return f"truncated safetensors ({size} bytes, not even a header length)"
    with path.open("rb") as handle:
        length = int.from_bytes(handle.read(8), "little")
        if length > size - 8:
            return f"truncated safetensors (a {size}-byte file whose header alone claims {length} bytes)"
        try:
            header = json.loads(handle.read(length))
            end = max((t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"), default=0)
        except (ValueError, KeyError, TypeError, IndexError, AttributeError):
            return "unreadable safetensors header"
    expected = 8 + length + int(end)
    if size < expected:
        return f"truncated safetensors ({size} bytes, its header describes {expected})"
    if size > expected:
        return f"damaged safetensors ({size - expected} bytes beyond the {expected} its header describes)"
    return None


def verify_hashes(checkpoint: Path, model: str | None = None) -> None:
    """Refuse a checkpoint whose weight files differ from the sha256 its stamp records (none: no check)."""
    expected = stamp_of(checkpoint).get("sha256") or {}
    for name, digest in expected.items():
        path = checkpoint / name
        if not path.is_file() or sha256(path) != digest:
            raise ModelLoadError(
                f"{path}: sha256 does not match the checkpoint's record (damaged or replaced weights): "
                + rebuild_hint(model)
            )


def verify_weights(checkpoint: Path, model: str | None = None) -> None:
    """Refuse a checkpoint with an incomplete safetensors file or a weight file off its recorded sha256,
    naming the file and the rebuild command."""
    for path in sorted(checkpoint.glob("*.safetensors")):
        problem = safetensors_problem(path)
        if problem is not None:
            raise ModelLoadError(f"{path}: {problem}: {rebuild_hint(model)}")
    verify_hashes(checkpoint, model)


def progress_bars_only_on_a_terminal() -> None:
    """Ray workers and Serve replicas write stderr to log files, where the progress bar of every
    model load or save (transformers' "Loading weights", "Writing model shards", hub downloads)
    is a line of noise per replica that the driver echoes; a terminal keeps its bars."""
    if not sys.stderr.isatty():
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()


def load_with_hint(checkpoint: str, loader: Callable[[str], T], model: str) -> T:
    """Run ``loader(checkpoint)``; on failure raise ModelLoadError saying what to do."""
    local = is_local(checkpoint)
    source = str(Path(checkpoint).expanduser()) if local else checkpoint
    if local and not Path(source).exists():
        raise ModelLoadError(
            f"{model}: checkpoint directory {source} does not exist; build the local zoo with `fmtrade models build`"
        )
    if local and Path(source).is_dir():
        verify_weights(Path(source), model)
    progress_bars_only_on_a_terminal()
    try:
        return loader(source)
    except (OSError, ValueError, RuntimeError, SafetensorError) as exc:
        if local:
            raise ModelLoadError(f"{model}: failed to load checkpoint {source}: {exc}; {rebuild_hint(model)}") from exc
        raise ModelLoadError(
            f"{model}: could not load hub id {checkpoint!r} ({type(exc).__name__}: {exc}). Without internet, "
            "use the local zoo: `fmtrade models build` and the `local` registry profile (models.profile: local)"
        ) from exc


def apply_lora_adapter(module: torch.nn.Module, adapter: str, device: str) -> torch.nn.Module:
    """Load a peft LoRA adapter directory into ``module`` (already on ``device``) and merge it into
    the weights (in place; the merged module is returned): inference then pays nothing for the
    adapter. The adapter's weights are read onto ``device`` too (peft would pick a device itself)."""
    from peft import PeftModel

    path = Path(adapter).expanduser()
    if not (path / ADAPTER_CONFIG).is_file():
        raise InputError("adapter", f"{path} is not a peft adapter directory (no {ADAPTER_CONFIG})")
    return PeftModel.from_pretrained(module, str(path), torch_device=device).merge_and_unload()
