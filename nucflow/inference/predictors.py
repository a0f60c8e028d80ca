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
from nucflow.methods import METHODS, TTA_MODES, parse_method

__all__ = [
    "METHODS", "TTA_MODES", "BaselinePredictor", "MethodSpec", "Predictor", "UNetPredictor", "autocast_dtype",
    "cpu_has_native_bf16", "parse_method",
]


class Predictor(Protocol):
    """(N, rows, cols, 3) uint8 RGB -> (N, rows, cols) float32 probabilities in [0, 1]."""

    input_multiple: int

    def __call__(self, batch: np.ndarray, *, params: dict[str, Any] | None = None) -> np.ndarray: ...


@dataclass(frozen=True)
class MethodSpec:
    """What a model actor needs to build its predictor: a method and, for ``unet``, the model.

    ``model`` is a :class:`nucflow.models.LoadedModel` (weights travel through Ray's object
    store, never through a pickle file). ``mpp`` is the working resolution in µm/px;
    ``tta`` one of :data:`TTA_MODES` (the model only).
    """

    method: str
    mpp: float
    model: Any = None
    sigma: float = 1.0
    tta: str = "none"

    @property
    def model_id(self) -> str:
        return self.model.card.model_id if self.model is not None else f"baseline-{self.method}"

    def build(self, *, device: str = "cpu", amp: bool = True, channels_last: bool = True) -> Predictor:
        if self.method == "unet":
            return UNetPredictor(self.model, device=device, amp=amp, channels_last=channels_last, tta=self.tta)
        return BaselinePredictor(self.method, sigma=self.sigma)


class UNetPredictor:
    """The trained segmentator on CPU or GPU.

    With ``amp`` the forward pass runs under autocast: bf16 (or fp16) on a GPU, from pinned
    host memory; bf16 on a CPU with native bf16 (AVX512-BF16 or AMX), where it measured 1.5x
    float32 (benchmarks/RESULTS.md); float32 on other CPUs, where bf16 is emulated and slower.
    Always under inference mode. Calls are serialised by a lock so that an actor can decode
    the next batch in another thread while this one computes.
    """

    def __init__(
        self, model: Any, *, device: str = "cpu", amp: bool = True, channels_last: bool = True, tta: str = "none"
    ) -> None:
        import torch

        if tta not in TTA_MODES:
            raise InputError(f"unknown test-time augmentation {tta!r}; choose one of {', '.join(TTA_MODES)}")
        self.tta = tta
        self._torch = torch
        self.device = torch.device(device)
        self.network = model.build(self.device)
        self.channels_last = channels_last
        if channels_last:
            self.network = self.network.to(memory_format=torch.channels_last)
        self.input_multiple = int(model.card.input_multiple)
        self._autocast_dtype = autocast_dtype(self.device, amp=amp)
        self._lock = threading.Lock()

    def __call__(self, batch: np.ndarray, *, params: dict[str, Any] | None = None) -> np.ndarray:
        torch = self._torch
        host = torch.from_numpy(np.ascontiguousarray(batch)).permute(0, 3, 1, 2)
        if self.device.type == "cuda":
            host = host.pin_memory()
        with self._lock, torch.inference_mode():
            x = self.prepare(host.to(self.device, non_blocking=True).float().div_(255.0))
            return self.forward(x).cpu().numpy()

    def prepare(self, x: Any) -> Any:
        """(N, 3, H, W) float32 RGB in [0, 1] on the device, in the network's memory format."""
        if self.channels_last:
            return x.contiguous(memory_format=self._torch.channels_last)
        return x

    def forward(self, x: Any) -> Any:
        """The network (averaged over the TTA views): prepared input -> (N, H, W) float32 on the device."""
        if self.tta == "none":
            return self._once(x)
        views = [(k, flip) for k in ((0, 1, 2, 3) if self.tta == "dihedral" and x.shape[-1] == x.shape[-2] else (0, 2))
                 for flip in (False, True)]
        total: Any = None
        for k, flip in views:
            view = self._torch.rot90(x, k, dims=(-2, -1))
            view = view.flip(-1) if flip else view
            prob = self._once(self.prepare(view))
            prob = prob.flip(-1) if flip else prob
            prob = self._torch.rot90(prob, -k, dims=(-2, -1))
            total = prob if total is None else total + prob
        return total / len(views)

    def _once(self, x: Any) -> Any:
        torch = self._torch
        with torch.inference_mode():
            if self._autocast_dtype is not None:
                with torch.autocast(self.device.type, dtype=self._autocast_dtype):
                    return self.network(x)[:, 0]  # float32 whatever autocast computed in (Segmentator)
            return self.network(x)[:, 0]


def autocast_dtype(device: Any, *, amp: bool = True) -> Any:
    """The dtype the model computes in on ``device`` (a ``torch.device`` or its name) under
    autocast: bf16 (fp16 on GPUs without bf16); None (float32) without ``amp`` or on a CPU
    without native bf16."""
    import torch

    device = torch.device(device)
    if not amp:
        return None
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "cpu" and cpu_has_native_bf16():
        return torch.bfloat16
    return None


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX tiles)."""
    import torch

    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(bool(getattr(torch.cpu, name, lambda: False)()) for name in checks)


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
