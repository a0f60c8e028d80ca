"""Where the pixel-wise post-processing steps run: the CPU (NumPy/SciPy/edt) or a GPU (CuPy).

The steps with exact GPU equivalents run on the chosen device: threshold, the binary median
(two 1-D box sums), opening and closing (shifted ANDs/ORs), the squared Euclidean distance
transform and its local maxima. Everything after (component labelling, seeds, watershed,
features) runs on the CPU from the arrays brought back, so the labels do not depend on the
device: the GPU steps are integer or boolean results of the same definitions (squared
distances are integers, rounded from CuPy's float64 distance). CuPy is optional
(``pip install nucflow[gpu]``); ``auto`` uses it when it imports and sees a CUDA device.

Run on a GPU once (an H200, CuPy 14.2, session s23; ``benchmarks/device_postprocess.py``): the
labels equalled the CPU path's on 26 validation maps and on a 12.9 MP map. The CI machines
have no GPU: there the selection logic is tested, and this backend's code with NumPy stand-ins.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np

from nucflow.errors import ConfigError
from nucflow.methods import DEVICES

__all__ = ["DEVICES", "ArrayBackend", "backend", "gpu_available", "resolve_device"]


@functools.cache
def gpu_available() -> bool:
    """Whether CuPy imports and sees at least one CUDA device (cached for the process)."""
    try:
        import cupy
    except ImportError:
        return False
    try:
        return int(cupy.cuda.runtime.getDeviceCount()) > 0
    except Exception:  # CUDA driver missing or broken: CuPy raises its own runtime errors
        return False


def resolve_device(setting: str) -> str:
    """``"cpu"`` or ``"gpu"`` for a ``postprocess_device`` setting.

    ``auto``: the GPU when :func:`gpu_available`, else the CPU. ``gpu`` without CuPy or a
    device is a :class:`ConfigError` (asked for, so not silently slower).
    """
    if setting not in DEVICES:
        raise ConfigError(f"postprocess_device must be one of {', '.join(DEVICES)}, got {setting!r}")
    if setting == "cpu":
        return "cpu"
    if gpu_available():
        return "gpu"
    if setting == "gpu":
        raise ConfigError(
            "postprocess_device is 'gpu' but CuPy is not installed or sees no CUDA device; "
            "install nucflow[gpu] on a GPU node, or set postprocess_device: auto or cpu"
        )
    return "cpu"


class ArrayBackend:
    """The array module (``numpy`` or ``cupy``) and ndimage of one device, and the transfers."""

    def __init__(self, device: str) -> None:
        self.device = device
        if device == "gpu":
            import cupy
            import cupyx.scipy.ndimage as cupy_ndimage

            self.xp: Any = cupy
            self.ndi: Any = cupy_ndimage
        else:
            from scipy import ndimage

            self.xp, self.ndi = np, ndimage

    def asarray(self, array: np.ndarray) -> Any:
        """``array`` on this device."""
        return self.xp.asarray(array)

    def to_host(self, array: Any) -> np.ndarray:
        """A NumPy array of ``array`` (a copy from the GPU, the same array on the CPU)."""
        return array if isinstance(array, np.ndarray) else self.xp.asnumpy(array)

    def squared_distance(self, mask: Any) -> Any:
        """Exact squared Euclidean distance of every foreground pixel to the background (0 outside)."""
        if self.device == "gpu":
            distance = self.ndi.distance_transform_edt(mask)
            return self.xp.rint(distance * distance).astype(self.xp.float32)
        import edt

        # Exact integers in float32, several times faster than scipy's distance_transform_edt.
        return edt.edtsq(mask, black_border=False, parallel=1)


@functools.cache
def backend(device: str) -> ArrayBackend:
    """The :class:`ArrayBackend` of ``"cpu"`` or ``"gpu"`` (one per process)."""
    return ArrayBackend(device)
