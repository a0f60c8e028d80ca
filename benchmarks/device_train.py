"""Train one model on a machine without Ray, stop on a time budget, export it and validate it.

For this workplace's lent GPU machine: it has PyTorch, CUDA and scikit-image but no Ray, and
nothing can be installed there from a registry (Ray's wheel alone is larger than what may
travel to it). ``nucflow train`` is a Ray Train job; this script runs the same per-worker loop
(:func:`nucflow.training._loop.train_loop_per_worker`) as one worker, with a stand-in for the
five ``ray.train`` calls that loop makes (its context, device, model wrapper, checkpoint and
report). Checkpoints land where ``nucflow train`` puts them (``OUT/checkpoints/nucflow-train/
step_*``), so :func:`nucflow.training.export_run` selects and exports the model as ``train``
does, with the configuration's rule. Training stops at the first checkpoint after
``--budget-s`` seconds (or at the configuration's end). The model is then scored with
``nucflow validate``'s code on every validation set (``--no-validate`` skips it).

Usage, from the repository root (data laid out as ``../shared/data``)::

    python benchmarks/device_train.py --config paper --seed 0 --data ../shared/data \\
        --budget-s 300 --checkpoint-every 250 -o runs/paper-s0

Not a replacement for ``nucflow train``: one process, one device, no resume.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import shutil
import sys
import time
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from nucflow.training._config import load_train_config  # noqa: E402
from nucflow.training._train import (  # noqa: E402
    RUN_NAME,
    _data_lists,
    _storage,
    batch_loaders,
    export_run,
    loop_config,
    training_record,
)


class OutOfTime(Exception):
    """Raised by the stand-in ``report`` after the checkpoint that passes the budget."""


class _Checkpoint:
    def __init__(self, path: str) -> None:
        self.path = path

    @classmethod
    def from_directory(cls, path: str) -> _Checkpoint:
        return cls(path)

    @contextlib.contextmanager
    def as_directory(self) -> Iterator[str]:
        yield self.path


def _stand_in_ray(storage: Path, device: torch.device, deadline: float) -> None:
    """Install ``ray.train`` / ``ray.train.torch`` modules with one worker's behaviour."""

    def report(metrics: dict[str, Any], checkpoint: _Checkpoint | None = None,
               checkpoint_dir_name: str | None = None) -> None:
        if checkpoint is not None:
            target = storage / RUN_NAME / (checkpoint_dir_name or f"step_{metrics['step']:08d}")
            shutil.copytree(checkpoint.path, target)
        print(json.dumps({"checkpoint": metrics.get("step"), "d_s": metrics.get("d_s"),
                          "total": metrics.get("total")}), flush=True)
        if time.perf_counter() > deadline:
            raise OutOfTime

    context = types.SimpleNamespace(get_world_rank=lambda: 0, get_world_size=lambda: 1)
    ray = types.ModuleType("ray")
    train = types.ModuleType("ray.train")
    train_torch = types.ModuleType("ray.train.torch")
    train.get_context = lambda: context  # type: ignore[attr-defined]
    train.get_checkpoint = lambda: None  # type: ignore[attr-defined]
    train.Checkpoint = _Checkpoint  # type: ignore[attr-defined]
    train.report = report  # type: ignore[attr-defined]
    train_torch.get_device = lambda: device  # type: ignore[attr-defined]
    train_torch.prepare_model = lambda m: m.to(device)  # type: ignore[attr-defined]
    train.torch = train_torch  # type: ignore[attr-defined]
    ray.train = train  # type: ignore[attr-defined]
    sys.modules.update({"ray": ray, "ray.train": train, "ray.train.torch": train_torch})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="paper", help="a shipped name (paper, cpu) or a YAML file")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--tiles", action="append", help="tile folders (default: DATA/ihc/regions)")
    parser.add_argument("--slides", action="append", help="slides (default: DATA/slides/OS-2-*.ome.tif)")
    parser.add_argument("--masks", action="append", help="mask folders (default: DATA/masks/consep, monuseg)")
    parser.add_argument("--no-slides", action="store_true", help="train on no slide (tiles only)")
    parser.add_argument("--no-skimage-ihc", action="store_true", help="leave scikit-image's IHC image out")
    parser.add_argument("--budget-s", type=float, default=300.0, help="seconds of training, then stop")
    parser.add_argument("--max-steps", type=int, help="override the configuration's length")
    parser.add_argument("--checkpoint-every", type=int, help="override the configuration's")
    parser.add_argument("--select-after", type=int, help="override the configuration's")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        help="SECTION.KEY=VALUE (YAML value), e.g. data.crop=256; repeatable")
    parser.add_argument("--threads", type=int, help="torch CPU threads")
    parser.add_argument("--loaders", type=int,
                        help="processes building batches ahead (default: on a GPU, all CPUs but one)")
    parser.add_argument("--no-validate", action="store_true")
    parser.add_argument("--export-only", action="store_true",
                        help="train nothing: export (and validate) the run in OUT from the checkpoints it "
                             "has, e.g. one stopped from outside at a hard deadline")
    parser.add_argument("-o", "--out", type=Path, required=True)
    args = parser.parse_args(argv)

    import yaml

    # Top-level settings through load_train_config (None keeps the file's); section keys one by one.
    config = load_train_config(args.config, seed=args.seed, max_steps=args.max_steps,
                               checkpoint_every=args.checkpoint_every, select_after=args.select_after)
    sections: dict[str, dict[str, Any]] = {"data": {"skimage_ihc": False}} if args.no_skimage_ihc else {}
    for item in args.overrides:
        key, _, value = item.partition("=")
        section, _, name = key.partition(".")
        sections.setdefault(section, {})[name] = yaml.safe_load(value)
    config = dataclasses.replace(config, **{
        s: dataclasses.replace(getattr(config, s), **kv) for s, kv in sections.items()})
    if args.threads:
        torch.set_num_threads(args.threads)

    data_root = args.data
    tiles = args.tiles or [data_root / "ihc" / "regions"]
    slides = [] if args.no_slides else args.slides or sorted((data_root / "slides").glob("OS-2-*.ome.tif"))
    masks = args.masks or [data_root / "masks" / "consep", data_root / "masks" / "monuseg"]
    out = args.out
    data = _data_lists(slides, tiles, masks, config)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    t0 = time.perf_counter()
    if args.export_only:
        stopped = "from outside (exported with --export-only)"
    else:
        storage, _ = _storage(out, None, resume=False)  # refuses a folder that holds a run
        out.mkdir(parents=True, exist_ok=True)
        _stand_in_ray(Path(storage), device, t0 + args.budget_s)

        from nucflow.training._loop import train_loop_per_worker

        gpus = 1 if device.type == "cuda" else 0
        loaders = args.loaders if args.loaders is not None else batch_loaders(gpus, os.cpu_count() or 1)
        try:
            train_loop_per_worker(loop_config(data, config, out, resume_from=None, loaders=loaders,
                                              threads=args.threads if device.type == "cpu" else None))
            stopped = "end of the configuration"
        except OutOfTime:
            stopped = f"budget of {args.budget_s:.0f} s"
    seconds = time.perf_counter() - t0
    name = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    training = training_record(" ".join(sys.argv), config, 1, data) | {
        "device": name, "stopped": stopped, "harness": "benchmarks/device_train.py"}
    if not args.export_only:
        training["seconds"] = round(seconds, 1)
    result = export_run(out, config=config, training=training)
    print(json.dumps({"out": str(out), "device": name, "stopped": stopped, "seconds": training.get("seconds"),
                      "steps": result.card.steps, "chosen": Path(result.checkpoint).name}), flush=True)
    if not args.no_validate:
        from nucflow.evaluation import load_validation_sets, validate, write_validation

        for vset in load_validation_sets(None, data=data_root):  # one table per set, as each ends
            report = validate([vset], methods=("unet",), models=(out / "model.safetensors",))
            write_validation(report, out / f"validation-{vset.name}")
            print(report.markdown(), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
