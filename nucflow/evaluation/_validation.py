"""Score models and baselines over every validation set in one run, into one table.

The sets are listed in ``nucflow/configs/validation.yaml`` (images, truth, µm/px, truth format,
relative to a data root). Each method, and each model given (e.g. one per training seed),
is scored on every image of every set with :func:`nucflow.evaluation.evaluate`; the table
has one row per (set, method) with the mean over the set's images (the paper's
aggregation), an ``overall`` row per method (the mean over sets, so a set with many tiles
does not outweigh the others), and, where several models are given, their mean and spread.
"""

from __future__ import annotations

import csv
import io
import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nucflow import __version__
from nucflow.atomic import write_json, write_text
from nucflow.config import CONFIG_DIR, read_yaml
from nucflow.errors import EvaluationError
from nucflow.methods import BASELINES

__all__ = [
    "DEFAULT_VALIDATION_SETS",
    "VALIDATION_METRICS",
    "ValidationReport",
    "ValidationSet",
    "load_validation_sets",
    "model_labels",
    "validate",
    "write_validation",
]

DEFAULT_VALIDATION_SETS = CONFIG_DIR / "validation.yaml"

#: Columns of the validation table: instance metrics where the truth has instances, detection
#: where it has points, and the labelling-index error (percentage points) where it has positivity.
VALIDATION_METRICS = ("dice", "aji", "object_dice", "pq", "f1_50", "det_precision", "det_recall", "li_error")
_TITLES = {"dice": "Dice", "aji": "AJI", "object_dice": "ObjDice", "pq": "PQ", "f1_50": "F1",
           "det_precision": "DetP", "det_recall": "DetR", "li_error": "LI err (pp)"}
OVERALL = "overall"


@dataclass(frozen=True)
class ValidationSet:
    name: str
    images: Path
    truth: Path
    mpp: float
    truth_format: str | None = None


def load_validation_sets(
    path: str | Path | None = None, *, data: str | Path = "../shared/data", only: Sequence[str] = ()
) -> list[ValidationSet]:
    """The sets of a manifest (default ``nucflow/configs/validation.yaml``), paths resolved under ``data``."""
    manifest = Path(path) if path is not None else DEFAULT_VALIDATION_SETS
    raw = read_yaml(manifest).get("sets")
    if not isinstance(raw, dict) or not raw:
        raise EvaluationError(f"{manifest} must hold a 'sets' mapping of name -> images, truth, mpp")
    unknown = sorted(set(only) - set(raw))
    if unknown:
        raise EvaluationError(f"unknown validation set(s) {', '.join(unknown)}; {manifest} has {', '.join(raw)}")
    sets = []
    for name, entry in raw.items():
        if only and name not in only:
            continue
        extra = set(entry) - {"images", "truth", "mpp", "truth_format"}
        if extra or not {"images", "truth", "mpp"} <= set(entry):
            raise EvaluationError(f"set {name!r} in {manifest} needs exactly images, truth, mpp (and truth_format)")
        images, truth = Path(data) / entry["images"], Path(data) / entry["truth"]
        for folder in (images, truth):
            if not folder.is_dir():
                raise EvaluationError(f"set {name!r}: folder {folder} does not exist; point --data at the data root")
        sets.append(ValidationSet(name, images, truth, float(entry["mpp"]), entry.get("truth_format")))
    return sets


@dataclass(frozen=True)
class ValidationReport:
    """Rows of (set, method) -> metrics, plus the settings that made them."""

    rows: tuple[dict[str, Any], ...]
    settings: dict[str, Any]

    def value(self, set_name: str, method: str, metric: str) -> float:
        for row in self.rows:
            if row["set"] == set_name and row["method"] == method:
                return float(row[metric])
        raise KeyError((set_name, method))

    def markdown(self) -> str:
        head = "| set | method | images | nuclei | " + " | ".join(_TITLES[m] for m in VALIDATION_METRICS) + " |"
        lines = [
            "# nucflow validation\n",
            f"nucflow {__version__}; sets: {', '.join(self.settings['sets'])}. Mean over each set's images, in %"
            " (LI error in percentage points); `overall` = mean over sets; `±` = standard deviation over models;"
            " `nuclei` = the annotated nuclei each set's figures rest on.\n",
            head, "|---|---|---:|---:|" + "---:|" * len(VALIDATION_METRICS),
        ]
        for row in self.rows:
            cells = [_fmt(row, m) for m in VALIDATION_METRICS]
            lines.append(f"| {row['set']} | {row['method']} | {row['images']} | {row['nuclei']} | "
                         + " | ".join(cells) + " |")
        return "\n".join(lines) + "\n"

    def to_csv(self) -> str:
        buffer = io.StringIO()
        names = ["set", "method", "images", "nuclei", *VALIDATION_METRICS, *(f"{m}_sd" for m in VALIDATION_METRICS)]
        writer = csv.DictWriter(buffer, fieldnames=names, extrasaction="ignore")
        writer.writeheader()
        for row in self.rows:
            writer.writerow({k: ("" if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()})
        return buffer.getvalue()

    def to_json(self) -> dict[str, Any]:
        clean = [{k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in r.items()} for r in self.rows]
        return {"nucflow_version": __version__, "settings": self.settings, "metrics": list(VALIDATION_METRICS),
                "rows": clean}


def _fmt(row: dict[str, Any], metric: str) -> str:
    value, spread = row[metric], row.get(f"{metric}_sd", math.nan)
    if isinstance(value, float) and math.isnan(value):
        return "-"
    scale = 1.0 if metric == "li_error" else 100.0
    text = f"{scale * value:.1f}"
    return text if math.isnan(spread) else f"{text} ± {scale * spread:.1f}"


def validate(
    sets: Sequence[ValidationSet],
    *,
    methods: Sequence[str] = BASELINES,
    models: Sequence[str | Path] = (),
    model_mpp: float | None = None,
    stain_profile: str | None = None,
    progress: Callable[[str], None] | None = None,
) -> ValidationReport:
    """Score ``methods`` and each of ``models`` (as ``unet``) on every set; one table.

    With no ``models`` and ``unet`` in ``methods``, the bundled model is scored. Models are
    reported as ``unet[<folder name>]`` and, when there are several, as ``unet[mean]`` with
    the standard deviation over them.
    """
    from nucflow.evaluation._evaluate import evaluate

    if not sets:
        raise EvaluationError("no validation sets to score")
    runs: list[tuple[str, str, str | Path | None]] = [(m, m, None) for m in methods if m != "unet"]
    if models:
        runs += [(f"unet[{label}]", "unet", p) for label, p in zip(model_labels(models), models, strict=True)]
    elif "unet" in methods:
        runs.append(("unet", "unet", None))
    rows: list[dict[str, Any]] = []
    for vset in sets:
        for i, (name, method, model) in enumerate(runs):
            if progress is not None:
                progress(f"{vset.name}: {name}")
            report = evaluate(vset.images, vset.truth, methods=[method], model=model, mpp=vset.mpp,
                              truth_format=vset.truth_format, stain_profile=stain_profile, model_mpp=model_mpp,
                              check_registration=i == 0)  # the truth's offset: once per set
            rows.append(_set_row(vset.name, name, method, report))
    if len(models) > 1:
        model_names = [f"unet[{label}]" for label in model_labels(models)]
        for vset in sets:
            rows.append(_spread(vset.name, "unet[mean]", [r for r in rows if r["set"] == vset.name
                                                           and r["method"] in model_names]))
    names = list(dict.fromkeys(r["method"] for r in rows))
    for name in names:
        mine = [r for r in rows if r["method"] == name]
        overall = {"set": OVERALL, "method": name, "images": sum(r["images"] for r in mine),
                   "nuclei": sum(r["nuclei"] for r in mine)}
        for metric in VALIDATION_METRICS:
            overall[metric] = _nanmean([r[metric] for r in mine])
            overall[f"{metric}_sd"] = math.nan
        rows.append(overall)
    if len(models) > 1:  # the overall spread is the spread of the models' overall scores
        per_model = [r for r in rows if r["set"] == OVERALL and r["method"] in model_names]
        mean_row = next(r for r in rows if r["set"] == OVERALL and r["method"] == "unet[mean]")
        mean_row.update({k: v for k, v in _spread(OVERALL, "unet[mean]", per_model).items() if k.endswith("_sd")})
    settings = {"sets": {s.name: {"images": str(s.images), "truth": str(s.truth), "mpp": s.mpp} for s in sets},
                "methods": list(methods), "models": [str(p) for p in models], "model_mpp": model_mpp,
                "stain_profile": stain_profile}
    return ValidationReport(rows=tuple(rows), settings=settings)


def model_labels(models: Sequence[str | Path]) -> list[str]:
    """A short name per model: its run folder (``runs/s0/model.safetensors`` -> ``s0``), or, when
    two would share it (``runs/s0/at/850`` and ``runs/s1/at/850``), its last three folders."""
    labels = [_label(m, depth=1) for m in models]
    if len(set(labels)) < len(labels):
        labels = [_label(m, depth=3) for m in models]
    return labels


def _label(model: str | Path, *, depth: int) -> str:
    path = Path(model)
    folder = path.parent if path.suffix == ".safetensors" else path
    return "/".join(folder.parts[-depth:])


def _set_row(set_name: str, name: str, method: str, report: Any) -> dict[str, Any]:
    mean = report.summary("mean")[method]
    pooled = report.summary("pooled")[method]
    # ``nuclei``: the annotated nuclei (instances or points) the set's figures rest on
    row: dict[str, Any] = {"set": set_name, "method": name, "images": len(report.scores),
                           "nuclei": int(pooled["n_true"])}
    for metric in VALIDATION_METRICS:
        if metric == "li_error":
            row[metric] = abs(pooled["li_pred"] - pooled["li_true"])
        else:
            row[metric] = mean[metric]
        row[f"{metric}_sd"] = math.nan
    return row


def _spread(set_name: str, method: str, rows: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {"set": set_name, "method": method, "images": rows[0]["images"] if rows else 0,
                           "nuclei": rows[0]["nuclei"] if rows else 0}
    for metric in VALIDATION_METRICS:
        values = [r[metric] for r in rows if not math.isnan(r[metric])]
        out[metric] = statistics.fmean(values) if values else math.nan
        out[f"{metric}_sd"] = statistics.stdev(values) if len(values) > 1 else math.nan
    return out


def _nanmean(values: list[float]) -> float:
    kept = [v for v in values if not math.isnan(v)]
    return statistics.fmean(kept) if kept else math.nan


def write_validation(report: ValidationReport, folder: str | Path) -> dict[str, Path]:
    """``validation.csv``, ``validation.json`` and ``validation.md`` in ``folder``, each atomically."""
    folder = Path(folder)
    return {
        "csv": write_text(folder / "validation.csv", report.to_csv()),
        "json": write_json(folder / "validation.json", report.to_json()),
        "markdown": write_text(folder / "validation.md", report.markdown()),
    }
