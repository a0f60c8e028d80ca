"""Predictors: anything that turns a batch of RGB tiles into nucleus probabilities.

The pipeline runs one of these inside each model actor: the trained UNet (``unet``) or the
paper's classical baselines (``threshold``, ``deconvolution``) through the same tiling,
stitching and post-processing.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from nucflow.errors import InputError

__all__ = ["METHODS", "BaselinePredictor", "MethodSpec", "Predictor", "UNetPredictor", "parse_method"]

METHODS = ("unet", "threshold", "deconvolution")


class Predictor(Protocol):
    """(N, rows, cols, 3) uint8 RGB -> (N, rows, cols) float32 probabilities in [0, 1]."""

    input_multiple: int

    def __call__(self, batch: np.ndarray, *, params: dict[str, Any] | None = None) -> np.ndarray: ...


def parse_method(method: str) -> str:
    """Validate a ``--method`` value."""
    if method not in METHODS:
        raise InputError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    return method


@dataclass(frozen=True)
class MethodSpec:
    """What a model actor needs to build its predictor: a method and, for ``unet``, the model.

    ``model`` is a :class:`nucflow.models.LoadedModel` (weights travel through Ray's object
    store, never through a pickle file). ``mpp`` is the working resolution in µm/px.
    """

    method: str
    mpp: float
    model: Any = None
    sigma: float = 1.0

    @property
    def model_id(self) -> str:
        return self.model.card.model_id if self.model is not None else f"baseline-{self.method}"

    def build(self, *, device: str = "cpu", amp: bool = True, channels_last: bool = True) -> Predictor:
        if self.method == "unet":
            return UNetPredictor(self.model, device=device, amp=amp, channels_last=channels_last)
        return BaselinePredictor(self.method, sigma=self.sigma)


class UNetPredictor:
    """The trained segmentator on CPU or GPU.

    On a GPU the forward pass runs under bf16 (or fp16) autocast from pinned host memory;
    on the CPU in float32 under inference mode. Calls are serialised by a lock so that an
    actor can decode the next batch in another thread while this one computes.
    """

    def __init__(self, model: Any, *, device: str = "cpu", amp: bool = True, channels_last: bool = True) -> None:
        import torch

        self._torch = torch
        self.device = torch.device(device)
        self.network = model.build(self.device)
        self.channels_last = channels_last
        if channels_last:
            self.network = self.network.to(memory_format=torch.channels_last)
        self.input_multiple = int(model.card.input_multiple)
        self._autocast_dtype = _gpu_autocast_dtype(torch) if amp and self.device.type == "cuda" else None
        self._lock = threading.Lock()

    def __call__(self, batch: np.ndarray, *, params: dict[str, Any] | None = None) -> np.ndarray:
        torch = self._torch
        host = torch.from_numpy(np.ascontiguousarray(batch)).permute(0, 3, 1, 2)
        if self.device.type == "cuda":
            host = host.pin_memory()
        with self._lock, torch.inference_mode():
            x = host.to(self.device, non_blocking=True).float().div_(255.0)
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            if self._autocast_dtype is not None:
                with torch.autocast("cuda", dtype=self._autocast_dtype):
                    prob = self.network(x)
            else:
                prob = self.network(x)
            return prob[:, 0].float().cpu().numpy()


def _gpu_autocast_dtype(torch: Any) -> Any:
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


class BaselinePredictor:
    """The paper's classical baselines; ``params["threshold"]`` is fitted once per slide."""

    input_multiple = 1

    def __init__(self, method: str, *, sigma: float = 1.0) -> None:
        self.method = method
        self.sigma = sigma

    def __call__(self, batch: np.ndarray, *, params: dict[str, Any] | None = None) -> np.ndarray:
        from nucflow.inference.baselines import baseline_probability

        threshold = (params or {}).get("threshold")
        return np.stack(
            [baseline_probability(rgb, method=self.method, threshold=threshold, sigma=self.sigma) for rgb in batch]
        ).astype(np.float32)
