"""Evaluation results: per image, mean over images, pooled; as text, CSV, JSON and markdown.

Scopes of a row
---------------
``image``
    One image.
``mean``
    The mean of the per-image scores (NaN ignored): the paper's aggregation.
``pooled``
    Counts summed over all images, then the ratios taken: every pixel / nucleus weighs the
    same, whatever image it is in.
"""

from __future__ import annotations

import csv
import functools
import io
import math
import operator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nucflow import __version__
from nucflow.atomic import write_json, write_text
from nucflow.evaluation.metrics import METRICS, Counts

__all__ = ["SCOPES", "EvaluationReport", "ImageScore", "write_report"]

SCOPES = ("image", "mean", "pooled")

# Short column titles for the terminal and markdown tables.
_TITLES = {
    "dice": "Dice",
    "balanced_accuracy": "BAcc",
    "precision": "Prec",
    "recall": "Rec",
    "aji": "AJI",
    "object_dice": "ObjDice",
    "object_hausdorff": "ObjHaus(px)",
    "f1_50": "F1@.5",
    "det_precision": "DetP",
    "det_recall": "DetR",
    "pq": "PQ",
    "ki67_accuracy": "Ki67Acc",
    "li_pred": "LI pred%",
    "li_true": "LI true%",
    "n_pred": "#pred",
    "n_true": "#true",
}
# Scores shown as percentages in the paper-style markdown table.
_MEAN_TITLE = "Mean over images (the paper's aggregation)"
_PERCENT = {"dice", "balanced_accuracy", "precision", "recall", "aji", "object_dice", "f1_50", "det_precision",
            "det_recall", "pq", "ki67_accuracy"}


@dataclass(frozen=True)
class ImageScore:
    """The counts of one method on one image."""

    method: str
    image: str
    truth_format: str
    counts: Counts


@dataclass(frozen=True)
class EvaluationReport:
    """Scores of every method on every image, with the settings that produced them."""

    scores: tuple[ImageScore, ...]
    methods: tuple[str, ...]
    settings: dict[str, Any] = field(default_factory=dict)

    def rows(self) -> list[dict[str, Any]]:
        """One dict per (method, scope, image): method, image, scope, truth_format, metrics."""
        out: list[dict[str, Any]] = []
        for method in self.methods:
            mine = [s for s in self.scores if s.method == method]
            per_image = [_row(method, s.image, "image", s.truth_format, s.counts.scores()) for s in mine]
            formats = "+".join(sorted({s.truth_format for s in mine}))
            out += per_image
            out.append(_row(method, "(all)", "mean", formats, _mean(r for r in per_image)))
            pooled = functools.reduce(operator.add, (s.counts for s in mine))
            out.append(_row(method, "(all)", "pooled", formats, pooled.scores()))
        return out

    def summary(self, scope: str = "mean") -> dict[str, dict[str, float]]:
        """Method -> metric -> value for ``scope`` "mean" or "pooled"."""
        return {r["method"]: {m: r[m] for m in METRICS} for r in self.rows() if r["scope"] == scope}

    def table(self) -> str:
        """A fixed-width text table of every row, for the terminal."""
        header = ["method", "image", "scope", *(_TITLES[m] for m in METRICS)]
        lines = [[r["method"], r["image"], r["scope"], *(_fmt(r[m], m) for m in METRICS)] for r in self.rows()]
        widths = [max(len(str(row[i])) for row in [header, *lines]) for i in range(len(header))]
        text = [_align(row, widths) for row in [header, *lines]]
        text.insert(1, "-" * len(text[0]))
        return "\n".join(text) + "\n"

    def markdown(self) -> str:
        """Paper-layout tables (rows = methods, columns = metrics), mean and pooled."""
        parts = [
            "# nucflow evaluation\n",
            f"Images: `{self.settings.get('images')}`; truth: `{self.settings.get('truth')}`; "
            f"mpp: {self.settings.get('mpp')}; nucflow {__version__}.\n",
            "Scores in % except Hausdorff (pixels) and counts; LI = Ki67 labelling index.\n",
        ]
        for scope, title in (("mean", _MEAN_TITLE), ("pooled", "Pooled over all images")):
            summary = self.summary(scope)
            parts.append(f"\n## {title}\n")
            parts.append("| method | " + " | ".join(_TITLES[m] for m in METRICS) + " |")
            parts.append("|---|" + "---:|" * len(METRICS))
            for method, values in summary.items():
                parts.append(f"| {method} | " + " | ".join(_fmt_md(values[m], m) for m in METRICS) + " |")
        return "\n".join(parts) + "\n"

    def to_json(self) -> dict[str, Any]:
        """The report as JSON-ready data (NaN written as null)."""
        rows = [{k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in r.items()} for r in self.rows()]
        return {
            "nucflow_version": __version__,
            "settings": self.settings,
            "methods": list(self.methods),
            "metrics": list(METRICS),
            "scopes": {
                "image": "one image",
                "mean": "mean of the per-image scores (NaN ignored), as the paper aggregates",
                "pooled": "counts summed over all images, then the ratios taken",
            },
            "rows": rows,
        }

    def to_csv(self) -> str:
        """Every row as CSV text (NaN as an empty cell)."""
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=["method", "image", "scope", "truth_format", *METRICS])
        writer.writeheader()
        for row in self.rows():
            writer.writerow({k: ("" if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()})
        return buffer.getvalue()


def _align(cells: list[Any], widths: list[int]) -> str:
    """Text columns left-aligned, numbers right-aligned."""
    pairs = enumerate(zip(cells, widths, strict=True))
    return " ".join(str(c).rjust(w) if i > 2 else str(c).ljust(w) for i, (c, w) in pairs)


def _row(method: str, image: str, scope: str, truth_format: str, values: dict[str, float]) -> dict[str, Any]:
    return {"method": method, "image": image, "scope": scope, "truth_format": truth_format, **values}


def _mean(rows: Any) -> dict[str, float]:
    rows = list(rows)
    out = {}
    for metric in METRICS:
        values = [r[metric] for r in rows if not math.isnan(r[metric])]
        out[metric] = sum(values) / len(values) if values else math.nan
    return out


def _fmt(value: float, metric: str) -> str:
    if math.isnan(value):
        return "-"
    if metric in ("n_pred", "n_true"):
        return f"{value:.0f}" if value == int(value) else f"{value:.1f}"
    return f"{value:.1f}" if metric in ("object_hausdorff", "li_pred", "li_true") else f"{value:.3f}"


def _fmt_md(value: float, metric: str) -> str:
    if math.isnan(value):
        return "-"
    return f"{100 * value:.1f}" if metric in _PERCENT else _fmt(value, metric)


def write_report(report: EvaluationReport, folder: str | Path) -> dict[str, Path]:
    """Write ``scores.csv``, ``scores.json`` and ``scores.md`` into ``folder``, each atomically.

    Returns
    -------
    dict[str, Path]
        "csv", "json", "markdown" -> the written file.
    """
    folder = Path(folder)
    return {
        "csv": write_text(folder / "scores.csv", report.to_csv()),
        "json": write_json(folder / "scores.json", report.to_json()),
        "markdown": write_text(folder / "scores.md", report.markdown()),
    }
