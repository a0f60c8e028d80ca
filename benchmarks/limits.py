"""The limits of the machine: how fast tiles can be read, and how fast the model alone runs.

* :func:`read_limit`: tiles/s of decoding (and resizing) whole context windows at the model's
  resolution through :class:`nucflow.slide.Slide`, threads sharing one handle.
* :func:`compute_limit`: tiles/s of the model alone on pre-loaded tensors, for each layout of
  the cores (one process with every thread, or one single-thread process per core, which is
  what the pipeline's CPU actors are) and batch size; the best is the limit.
* :func:`cpu_options`: the CPU inference options (memory format, grad mode, bf16 autocast,
  torch.compile, ONNX Runtime), one thread, interleaved repetitions, best of each.
"""

from __future__ import annotations

import multiprocessing
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from nucflow.slide import Tile

__all__ = ["compute_limit", "cpu_options", "read_limit"]


def read_limit(slide_path: Path, tiles: Sequence[Tile], *, mpp: float, threads: int, repeats: int = 2) -> dict:
    """Tiles/s reading the context windows of ``tiles`` with ``threads`` threads on one handle.

    Also ``cpu_s_per_tile``: this process's CPU seconds (``time.process_time``: user + system
    of every thread) per context window with one reading thread, least over the repeats; unlike
    the wall-clock rates, other load on the machine changes it little.
    """
    from nucflow.slide import open_slide

    result: dict[str, Any] = {"tiles": len(tiles), "threads": threads}
    with open_slide(slide_path) as slide:

        def read(tile: Tile) -> int:
            row, col = tile.read_origin
            return int(slide.read(mpp=mpp, row=row, col=col, rows=tile.size, cols=tile.size)[0, 0, 0])

        for n in sorted({1, threads}):
            best, least_cpu = 0.0, float("inf")
            for _ in range(repeats):
                started, cpu = time.perf_counter(), time.process_time()
                with ThreadPoolExecutor(n) as pool:
                    list(pool.map(read, tiles))
                best = max(best, len(tiles) / (time.perf_counter() - started))
                least_cpu = min(least_cpu, (time.process_time() - cpu) / len(tiles))
            result[f"tiles_per_s_{n}_threads"] = round(best, 2)
            if n == 1:
                result["cpu_s_per_tile"] = round(least_cpu, 5)
    result["tiles_per_s"] = result[f"tiles_per_s_{threads}_threads"]
    return result


# --------------------------------------------------------------------------- model alone


def _batch(size: int, n: int, seed: int = 0) -> Any:
    import torch

    generator = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, size, size, generator=generator)


def _compute_worker(model_path: str, options: dict, threads: int, batch: int, size: int, seconds: float,
                    barrier: Any, queue: Any) -> None:
    import torch

    from nucflow.inference import UNetPredictor
    from nucflow.models import load_model

    torch.set_num_threads(threads)
    predictor = UNetPredictor(load_model(model_path), **options)
    x = predictor.prepare(_batch(size, batch))
    predictor.forward(x)
    barrier.wait()
    started, cpu, done = time.perf_counter(), time.process_time(), 0
    while time.perf_counter() - started < seconds:
        predictor.forward(x)
        done += batch
    queue.put((done, time.perf_counter() - started, time.process_time() - cpu))


def _layout_rate(
    model_path: Path, options: dict, *, processes: int, threads: int, batch: int, size: int, seconds: float
) -> tuple[float, float]:
    """Summed tiles/s of the processes, and their CPU seconds per tile."""
    ctx = multiprocessing.get_context("spawn")
    barrier, queue = ctx.Barrier(processes), ctx.Queue()
    args = (str(model_path), options, threads, batch, size, seconds, barrier, queue)
    workers = [ctx.Process(target=_compute_worker, args=args) for _ in range(processes)]
    for w in workers:
        w.start()
    runs = [queue.get(timeout=600) for _ in workers]
    for w in workers:
        w.join()
    tiles = sum(done for done, _, _ in runs)
    return float(sum(done / wall for done, wall, _ in runs)), sum(cpu for _, _, cpu in runs) / tiles


def compute_limit(
    model_path: Path, *, options: dict, size: int, cores: int, batches: Sequence[int], seconds: float,
    one_layout: bool = False,
) -> dict:
    """Tiles/s of the model alone, per layout and batch size, with the best as ``tiles_per_s``.

    ``options`` (``amp``, ``channels_last``) are the pipeline's, so both run the same maths.
    Each layout runs its processes at once for ``seconds`` after a warm-up; the figure is the
    sum of their rates. Layouts: ``{cores}x1`` (processes x threads each) and, unless
    ``one_layout``, ``1x{cores}``.
    """
    layouts = [(cores, 1), (1, cores)] if cores > 1 and not one_layout else [(cores, 1)]
    table: dict[str, float] = {}
    cpu: dict[str, float] = {}
    for processes, threads in layouts:
        for batch in batches:
            name = f"{processes}x{threads} batch {batch}"
            rate, cpu[name] = _layout_rate(
                model_path, options, processes=processes, threads=threads, batch=batch, size=size, seconds=seconds
            )
            table[name] = round(rate, 3)
    best = max(table, key=table.__getitem__)
    thrifty = min(cpu, key=cpu.__getitem__)
    return {"tile_size": size, "options": options, "by_layout_and_batch": table, "best": best,
            "tiles_per_s": table[best], "cpu_s_per_tile": {k: round(v, 4) for k, v in cpu.items()},
            "least_cpu_s_per_tile": round(cpu[thrifty], 4), "least_cpu": thrifty}


# --------------------------------------------------------------------------- CPU options


def _variants(model_path: Path, *, compile_model: bool, onnx: bool, size: int, batch: int) -> dict[str, Callable]:
    """Named callables running one forward pass of a (batch, 3, size, size) input each."""
    import torch

    from nucflow.models import load_model

    net = load_model(model_path).build()
    last = load_model(model_path).build().to(memory_format=torch.channels_last)
    x = _batch(size, batch)
    xl = x.contiguous(memory_format=torch.channels_last)

    def run(network: Any, inp: Any, *, mode: Callable, bf16: bool = False) -> Callable:
        def call() -> Any:
            with mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                return network(inp).float()

        return call

    variants = {
        "fp32 no_grad contiguous": run(net, x, mode=torch.no_grad),
        "fp32 inference_mode contiguous": run(net, x, mode=torch.inference_mode),
        "fp32 inference_mode channels_last": run(last, xl, mode=torch.inference_mode),
        "bf16 autocast contiguous": run(net, x, mode=torch.inference_mode, bf16=True),
        "bf16 autocast channels_last": run(last, xl, mode=torch.inference_mode, bf16=True),
    }
    if compile_model:
        variants["fp32 torch.compile channels_last"] = run(torch.compile(last), xl, mode=torch.inference_mode)
    if onnx:
        session = _onnx_session(net, x)
        if session is not None:
            feed = {session.get_inputs()[0].name: x.numpy()}
            variants["onnxruntime fp32"] = lambda: session.run(None, feed)
    return variants


def _onnx_session(net: Any, x: Any) -> Any:
    """An ONNX Runtime session (one thread) of ``net``; None without onnxruntime and onnx."""
    try:
        import onnxruntime as ort
    except ImportError:
        return None
    import io

    import torch

    buffer = io.BytesIO()
    try:
        torch.onnx.export(net, (x,), buffer, input_names=["rgb"], output_names=["prob"], dynamo=False)
    except Exception:  # noqa: BLE001 - the exporter needs the optional onnx package
        return None
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    return ort.InferenceSession(buffer.getvalue(), options, providers=["CPUExecutionProvider"])


def cpu_options(
    model_path: Path, *, size: int, batch: int, rounds: int, calls: int, compile_model: bool, onnx: bool
) -> dict:
    """Tiles/s of each CPU option on one thread: ``rounds`` interleaved rounds, best round each.

    Also reports how far bf16 autocast moves the probabilities from float32.
    """
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _time_options(model_path, size=size, batch=batch, rounds=rounds, calls=calls,
                             compile_model=compile_model, onnx=onnx)
    finally:
        torch.set_num_threads(threads)


def _time_options(
    model_path: Path, *, size: int, batch: int, rounds: int, calls: int, compile_model: bool, onnx: bool
) -> dict:
    started = time.perf_counter()
    variants = _variants(model_path, compile_model=compile_model, onnx=onnx, size=size, batch=batch)
    warm = {}
    for name, call in variants.items():
        t0 = time.perf_counter()
        call()
        warm[name] = round(time.perf_counter() - t0, 2)
    best = dict.fromkeys(variants, 0.0)
    for _ in range(rounds):
        for name, call in variants.items():
            t0 = time.perf_counter()
            for _ in range(calls):
                call()
            best[name] = max(best[name], calls * batch / (time.perf_counter() - t0))
    fp32 = variants["fp32 inference_mode contiguous"]().numpy()
    bf16 = variants["bf16 autocast channels_last"]().numpy()
    return {
        "threads": 1,
        "batch": batch,
        "tile_size": size,
        "tiles_per_s": {k: round(v, 3) for k, v in best.items()},
        "first_call_s": warm,
        "bf16_max_abs_diff": round(float(np.abs(fp32 - bf16).max()), 4),
        "bf16_class_flips": round(float(((fp32 > 0.5) != (bf16 > 0.5)).mean()), 5),
        "seconds": round(time.perf_counter() - started, 1),
    }
