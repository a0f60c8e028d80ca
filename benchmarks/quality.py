"""Quality sweeps on the validation sets: models x working resolutions x post-processing settings.

Usage (from the repository root)::

    .venv/bin/python benchmarks/quality.py --model runs/s0/model.safetensors --model runs/s1/... \
        --model-mpp 0.5 --model-mpp 0.35 --vary fill_holes=true,false --vary min_distance_um=2,3,4 \
        -o quality-out

Every model (each at every ``--model-mpp``) and both baselines run once per validation tile
(``nucflow.pipeline.image.segment_image``, the steps ``segment`` takes); their probability
maps are cached under ``--cache`` (per weights, and float32 and bf16 maps apart: :func:`cache_key`) and then
post-processed with every combination of the ``--vary`` settings of the stain profile. Each
combination gets the validation table of ``nucflow validate`` (mean over each set's images,
then over sets; mean and spread over the models), and ``sweep.md`` lists them side by side.
Choose settings from this table only.

``--register-truth`` first moves each instance truth onto its own image (the shift that best
aligns its foreground with the image's hematoxylin + DAB density; ``nucflow.evaluation._register``)
and records the shifts in ``sweep.json``: a check of how much a displaced annotation costs each
method, never a basis for choosing settings.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import math
import statistics
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from nucflow.evaluation import load_validation_sets  # noqa: E402
from nucflow.evaluation._evaluate import POINT_MATCH_UM  # noqa: E402
from nucflow.evaluation._register import shift_labels, truth_offset  # noqa: E402
from nucflow.evaluation._report import EvaluationReport, ImageScore  # noqa: E402
from nucflow.evaluation._truth import pair_files, read_image, read_truth  # noqa: E402
from nucflow.evaluation._validation import VALIDATION_METRICS, _nanmean, _set_row, model_labels  # noqa: E402
from nucflow.evaluation.metrics import count_instances, count_points  # noqa: E402
from nucflow.inference.predictors import autocast_dtype  # noqa: E402
from nucflow.inference.tiled import gate_core  # noqa: E402
from nucflow.pipeline import load_segment_config  # noqa: E402
from nucflow.pipeline.image import (  # noqa: E402
    adapt_profile,
    build_predictor,
    find_tissue,
    fit_params,
    interior_markers,
    mask_shrink_um,
    method_profile,
    method_spec,
    positive_calls,
    resample_labels,
    segment_image,
    work_grid,
)
from nucflow.postprocess import label_nuclei, load_stain_profile  # noqa: E402
from nucflow.slide.reader import array_slide  # noqa: E402

__all__ = ["cache_key", "main"]


def _parse_vary(items: list[str]) -> dict[str, list[Any]]:
    grid: dict[str, list[Any]] = {}
    for item in items:
        key, _, values = item.partition("=")
        grid[key] = [_value(v) for v in values.split(",")]
    return grid


def _value(text: str) -> Any:
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    try:
        return int(text)
    except ValueError:
        return float(text)


def _runs(models: list[str], model_mpps: list[float | None], baselines: list[str],
          ttas: list[str]) -> list[dict[str, Any]]:
    runs: list[dict[str, Any]] = [
        {"name": b, "method": b, "model": None, "model_mpp": None, "tta": "none", "group": b} for b in baselines
    ]
    labels = model_labels(models)
    for mpp, tta in itertools.product(model_mpps, ttas):
        tag = ("" if mpp is None else f"@{mpp:g}") + ("" if tta == "none" else f"+{tta}")
        for model, label in zip(models, labels, strict=True):
            runs.append({"name": f"unet[{label}]{tag}", "method": "unet", "model": model, "model_mpp": mpp,
                         "tta": tta, "group": f"unet{tag}"})
    return runs


def cache_key(run: dict[str, Any], set_name: str, *, autocast: Any = None, model_id: str | None = None) -> str:
    """The cache folder of ``run``'s maps of one set: its method, model (path, and ``model_id``,
    the hash of its weights, so new weights at the same path, e.g. a re-exported bundled model,
    are never read back as the old ones' maps), resolution and augmentation, and the dtype the
    model computed in under autocast (``autocast_dtype``: bf16 on a CPU with native bf16)."""
    parts = [run["method"], run["model"] and str(Path(run["model"]).resolve()), run["model_mpp"], set_name, run["tta"]]
    parts += [] if autocast is None else [str(autocast)]
    parts += [] if model_id is None else [model_id]
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:16]


def _probabilities(run: dict[str, Any], vset: Any, cache: Path, *, register: bool = False) -> list[dict[str, Any]]:
    """Each image of the set with its cached (or new) probability map at the working resolution."""
    config = replace(load_segment_config(), method=run["method"], model=run["model"], model_mpp=run["model_mpp"])
    # the predictor below runs on the CPU (build_predictor's default device)
    numerics = autocast_dtype("cpu", amp=config.inference.amp) if run["method"] == "unet" else None
    config = replace(config, inference=replace(config.inference, tta=run["tta"]))
    spec = method_spec(config)
    key = cache_key(run, vset.name, autocast=numerics, model_id=spec.model_id if run["method"] == "unet" else None)
    shrink = mask_shrink_um(spec)  # from the card, at the working resolution (never cached)
    interior = interior_markers(spec)
    predictor = None
    out = []
    for image, truth in pair_files(vset.images, vset.truth, what="truth", suffixes=(".png", ".tif", ".csv")):
        path = cache / key / f"{image.stem}.npz"
        rgb = read_image(image)
        if path.is_file():
            data = np.load(path)
            prob, work, mpp = data["prob"], data["rgb"], float(data["mpp"])
        else:
            if predictor is None:
                predictor = build_predictor(spec, config)
            # The model's map before the stain gate: _score applies the variant's gate (tested
            # equal to segment_image's own gating in tests/test_stain_gate.py).
            ungated = replace(method_profile(config, spec), stain_gate=0.0)
            seg = segment_image(rgb, mpp=vset.mpp, spec=spec, config=config, predictor=predictor, profile=ungated)
            prob, work, mpp = np.rint(seg.probability * 255).astype(np.uint8), seg.rgb, seg.mpp
            path.parent.mkdir(parents=True, exist_ok=True)
            np.savez_compressed(path, prob=prob, rgb=work, mpp=mpp)
        gt = read_truth(truth, format=vset.truth_format)
        offset = (0, 0)
        if register and gt.labels is not None:  # instance truth moved onto its image (sensitivity check)
            offset = truth_offset(rgb, gt.labels)
            gt = replace(gt, labels=shift_labels(gt.labels, offset))
        out.append({"name": image.stem, "rgb": rgb, "truth": gt, "offset": offset,
                    "prob": prob, "work": work, "mpp": mpp, "shrink": shrink,
                    "interior": interior, "image_mpp": vset.mpp, "spec": spec})
    return out


def _score(images: list[dict[str, Any]], vset: Any, profile: Any, method: str) -> EvaluationReport:
    scores = []
    for im in images:
        grown = adapt_profile(profile, shrink_um=im["shrink"], interior=im["interior"])
        labels = label_nuclei(gated(im, profile), mpp=im["mpp"], config=grown)
        positive = positive_calls(im["work"], labels, profile)
        full = resample_labels(labels, im["rgb"].shape[:2], scale=vset.mpp / im["mpp"])
        gt = im["truth"]
        if gt.points is not None:
            counts = count_points(full, gt.points, pred_positive=positive, point_positive=gt.point_positive,
                                  max_distance=POINT_MATCH_UM / vset.mpp)
        else:
            counts = count_instances(full, gt.labels, pred_positive=positive, true_positive=gt.positive)
        scores.append(ImageScore(method=method, image=im["name"], truth_format=gt.format, counts=counts))
    return EvaluationReport(scores=tuple(scores), methods=(method,))


def gated(image: dict[str, Any], profile: Any) -> np.ndarray:
    """A model's cached map with the profile's stain gate applied as ``segment`` applies it: to
    each tile core of the image's grid, referenced to the core's nuclei (the baselines are
    never gated). Tested equal to ``segment_image``'s own gating (tests/test_stain_gate.py)."""
    prob = image["prob"]
    params = fit_params(image["spec"], np.zeros((1, 1, 3), np.uint8), np.zeros((1, 1), bool), profile)
    if "stain_gate" not in params:
        return prob
    config = load_segment_config()
    _, _, tissue = find_tissue(array_slide(image["rgb"], mpp=image["image_mpp"]), config.tissue)
    out = prob.copy()
    scale = 255.0 if prob.dtype == np.uint8 else 1.0  # the cache holds probability x 255 in uint8
    factor, threshold = params["stain_gate"]
    for t in work_grid(prob.shape, image["spec"], config, tissue).tiles:
        core = (slice(t.row, t.row + t.rows), slice(t.col, t.col + t.cols))
        out[core] = gate_core(prob[core], image["work"][core], [factor, threshold * scale])
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", action="append", default=[], help="model to score (repeat: seeds)")
    parser.add_argument("--model-mpp", action="append", type=float, default=[], help="working µm/px (repeat)")
    parser.add_argument("--baseline", action="append", default=None, help="baselines (default both; 'none')")
    parser.add_argument("--tta", action="append", default=[], help="model test-time augmentation (repeat)")
    parser.add_argument("--vary", action="append", default=[], help="stain-profile KEY=V1,V2,... (repeat)")
    parser.add_argument("--stain", default="ki67")
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "data"))
    parser.add_argument("--set", action="append", default=[], help="only these sets")
    parser.add_argument("--cache", default=str(ROOT / ".quality-cache"))
    parser.add_argument("--register-truth", action="store_true",
                        help="move each instance truth onto its image first (nucflow.evaluation._register; a "
                             "sensitivity check: the validation table scores the truth as published)")
    parser.add_argument("-o", "--out", required=True)
    args = parser.parse_args(argv)

    sets = load_validation_sets(data=args.data, only=args.set)
    baselines = ["threshold", "deconvolution"] if args.baseline is None else [b for b in args.baseline if b != "none"]
    runs = _runs(args.model, args.model_mpp or [None], baselines, args.tta or ["none"])
    grid = _parse_vary(args.vary)
    base = load_stain_profile(args.stain)
    variants = [dict(zip(grid, combo, strict=True)) for combo in itertools.product(*grid.values())] or [{}]
    cache, out = Path(args.cache), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    offsets: dict[str, dict[str, tuple[int, int]]] = {}
    for vset in sets:
        for run in runs:
            print(f"{vset.name}: {run['name']}", file=sys.stderr, flush=True)
            images = _probabilities(run, vset, cache, register=args.register_truth)
            offsets[vset.name] = {im["name"]: im["offset"] for im in images}
            for variant in variants:
                report = _score(images, vset, replace(base, **variant), run["method"])
                row = _set_row(vset.name, run["name"], run["method"], report)
                rows.append({**row, "variant": json.dumps(variant, sort_keys=True), "group": run["group"]})
    table = _aggregate(rows)
    (out / "sweep.json").write_text(json.dumps({"sets": [s.name for s in sets], "runs": runs, "grid": grid,
                                                "truth_offsets": offsets, "rows": table, "per_run": rows},
                                               indent=1, default=str, allow_nan=True))
    (out / "sweep.md").write_text(_markdown(table, [s.name for s in sets]))
    print(_markdown(table, [s.name for s in sets]))
    return 0


def _aggregate(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (variant, group): each set's mean over the group's runs (models), its spread, and overall."""
    out = []
    keys = list(dict.fromkeys((r["variant"], r["group"]) for r in rows))
    for variant, group in keys:
        mine = [r for r in rows if r["variant"] == variant and r["group"] == group]
        entry: dict[str, Any] = {"variant": variant, "group": group, "runs": len({r["method"] for r in mine})}
        per_set: dict[str, dict[str, Any]] = {}
        for vset in dict.fromkeys(r["set"] for r in mine):
            here = [r for r in mine if r["set"] == vset]
            per_set[vset] = {m: _mean_sd([r[m] for r in here]) for m in VALIDATION_METRICS}
        per_run_overall = {}
        for name in dict.fromkeys(r["method"] for r in mine):
            theirs = [r for r in mine if r["method"] == name]
            per_run_overall[name] = {m: _nanmean([r[m] for r in theirs]) for m in VALIDATION_METRICS}
        per_set["overall"] = {m: _mean_sd([v[m] for v in per_run_overall.values()]) for m in VALIDATION_METRICS}
        entry["sets"] = per_set
        out.append(entry)
    return out


def _mean_sd(values: list[float]) -> tuple[float, float]:
    kept = [v for v in values if not math.isnan(v)]
    if not kept:
        return (math.nan, math.nan)
    return (statistics.fmean(kept), statistics.stdev(kept) if len(kept) > 1 else math.nan)


def _markdown(table: list[dict[str, Any]], sets: list[str]) -> str:
    shown = ("dice", "aji", "f1_50", "li_error")
    lines = ["| variant | method | " + " | ".join(f"{s} {m}" for s in [*sets, "overall"] for m in shown) + " |",
             "|---|---|" + "---:|" * (len(shown) * (len(sets) + 1))]
    for entry in table:
        cells = []
        for vset in [*sets, "overall"]:
            for metric in shown:
                mean, sd = entry["sets"].get(vset, {}).get(metric, (math.nan, math.nan))
                scale = 1.0 if metric == "li_error" else 100.0
                text = "-" if math.isnan(mean) else f"{scale * mean:.1f}"
                if not math.isnan(sd):
                    text += f"±{scale * sd:.1f}"
                cells.append(text)
        lines.append(f"| {entry['variant']} | {entry['group']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
