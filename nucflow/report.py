"""The cohort report: ``out/report.html``, one self-contained page for a run.

A table of slides (status, error, nuclei, tissue, labelling index global and in the hot
spot, H-score, time), plots (labelling index across the cohort, nucleus area and DAB
intensity distributions, time per stage) as inline SVG, and each slide's QC overlay as an
inline JPEG with its hot spot marked. No script, stylesheet, font or image is fetched: the
page opens from a disk, a mail attachment or an archive without a network.
"""

from __future__ import annotations

import base64
import csv
import datetime
import html
import io
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from nucflow import __version__
from nucflow.atomic import write_text
from nucflow.scoring import CLASS_COLOURS, INTENSITY_CLASSES

__all__ = ["ReportSlide", "slides_of_folder", "write_region_table", "write_report"]

#: Width (px) of each slide's overlay thumbnail in the page.
THUMBNAIL_PX = 480


@dataclass(frozen=True)
class ReportSlide:
    """One row of the report: a slide of the run, how it ended, and its summary (if any)."""

    slide: str
    status: str
    error: str = ""
    summary: dict[str, Any] = field(default_factory=dict)
    overlay: Path | None = None


def slides_of_folder(out: str | Path, results: Sequence[Any] | None = None) -> list[ReportSlide]:
    """The report's slides: ``results`` (:class:`nucflow.pipeline.SlideResult`) of a run, each
    with its ``summary.json`` when the run skipped it; or, without results, the slides of the
    last run's ``summary.csv`` (with their status and error), then every other slide folder of
    ``out`` holding a ``summary.json``."""
    out = Path(out)
    if results is None:
        results = []
        if (out / "summary.csv").is_file():
            with open(out / "summary.csv", newline="", encoding="utf-8") as table:
                results = [_Found(row["slide"], row["status"], row.get("error") or "") for row in csv.DictReader(table)]
        listed = {r.slide for r in results}
        folders = sorted(p.parent.name for p in out.glob("*/summary.json"))
        results += [_Found(name, "ok") for name in folders if name not in listed]
    slides = []
    for r in results:
        folder = out / r.slide
        summary = dict(getattr(r, "summary", None) or {})
        if not summary and r.status != "failed" and (folder / "summary.json").is_file():
            summary = json.loads((folder / "summary.json").read_text())
        overlay = folder / "overlay.png"
        slides.append(ReportSlide(slide=r.slide, status=r.status, error=getattr(r, "error", "") or "",
                                  summary=summary, overlay=overlay if overlay.is_file() and summary else None))
    return slides


@dataclass(frozen=True)
class _Found:
    slide: str
    status: str
    error: str = ""


def write_report(path: str | Path, slides: Sequence[ReportSlide], *, title: str = "nucflow run") -> Path:
    """Write the report page to ``path`` (atomically); returns the path."""
    done = [s for s in slides if s.summary]
    parts = [
        _HEAD.format(title=html.escape(title)),
        f"<h1>{html.escape(title)}</h1>",
        f"<p class='meta'>{len(slides)} slides: {_status_counts(slides)}. Written "
        f"{datetime.datetime.now(datetime.UTC).strftime('%Y-%m-%d %H:%M UTC')} by nucflow {html.escape(__version__)}."
        "</p>",
        _table(slides),
    ]
    if done:
        parts += ["<h2>Cohort</h2>", "<div class='plots'>",
                  _figure("Labelling index per slide", _index_plot(done)),
                  _figure("Nucleus area", _histogram_plot(done, "area_um2", "nucleus area (µm²; last bin: larger)")),
                  _figure("Nucleus DAB intensity", _histogram_plot(done, "dab_od", "mean DAB optical density",
                                                                   thresholds=_thresholds(done))),
                  _figure("Time per stage", _time_plot(done)), "</div>"]
        parts += ["<h2>Slides</h2>"] + [_slide_card(s) for s in done]
    parts.append("</body></html>\n")
    return write_text(path, "\n".join(parts))


_REGION_FIELDS = ("slide", "region", "nuclei", "positive", "labelling_index_percent",
                  "hotspot_labelling_index_percent", "h_score", "tissue_area_mm2", "nuclei_per_mm2")


def write_region_table(path: str | Path, slides: Sequence[ReportSlide]) -> Path | None:
    """``regions.csv``: the figures of every region of interest of every slide (None, and no
    file, when no slide has regions)."""
    rows = []
    for s in slides:
        for name, r in ((s.summary.get("scoring") or {}).get("regions") or {}).items():
            spot = r.get("hot_spot") or {}
            rows.append({**r, "slide": s.slide, "region": name,
                         "hotspot_labelling_index_percent": spot.get("labelling_index_percent")})
    if not rows:
        return None
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=_REGION_FIELDS, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    return write_text(path, buffer.getvalue())


_HEAD = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 1.5em; color: #222; }}
h1 {{ font-size: 1.4em; margin-bottom: 0.2em; }} h2 {{ font-size: 1.15em; margin-top: 1.6em; }}
.meta {{ color: #555; }}
table {{ border-collapse: collapse; font-size: 0.9em; }}
th, td {{ border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }}
th {{ background: #f0f0f0; }} td.name, td.error, th.name {{ text-align: left; }}
td.error {{ color: #a00; max-width: 40em; }}
tr.failed td {{ background: #fff0f0; }}
.plots {{ display: flex; flex-wrap: wrap; gap: 1em; }}
figure {{ margin: 0; }} figcaption {{ font-weight: 600; font-size: 0.9em; }}
.card {{ display: inline-block; vertical-align: top; margin: 0 1em 1em 0; }}
.card img {{ width: {thumb}px; max-width: 100%; border: 1px solid #ccc; }}
</style></head><body>""".replace("{thumb}", str(THUMBNAIL_PX))


def _status_counts(slides: Sequence[ReportSlide]) -> str:
    counts: dict[str, int] = {}
    for s in slides:
        counts[s.status] = counts.get(s.status, 0) + 1
    return ", ".join(f"{n} {status}" for status, n in sorted(counts.items())) or "none"


_COLUMNS = ("Slide", "Status", "Error", "Nuclei", "Tissue mm²", "LI %", "Hot-spot LI %", "H-score", "Time s")


def _table(slides: Sequence[ReportSlide]) -> str:
    rows = ["<table id='slides'><thead><tr>"
            + "".join(f"<th{' class=name' if c in ('Slide', 'Error') else ''}>{html.escape(c)}</th>"
                      for c in _COLUMNS)
            + "</tr></thead><tbody>"]
    for s in slides:
        summary = s.summary
        seconds = sum((summary.get("seconds") or {}).values()) if summary else None
        cells = [
            f"<td class='name'><a href='#slide-{_anchor(s.slide)}'>{html.escape(s.slide)}</a></td>"
            if summary else f"<td class='name'>{html.escape(s.slide)}</td>",
            f"<td>{html.escape(s.status)}</td>",
            f"<td class='error'>{html.escape(s.error)}</td>",
            _cell(summary.get("nuclei"), "{:,}"),
            _cell(summary.get("tissue_area_mm2"), "{:.3f}"),
            _cell(summary.get("labelling_index_percent"), "{:.1f}"),
            _cell(summary.get("hotspot_labelling_index_percent"), "{:.1f}"),
            _cell(summary.get("h_score"), "{:.0f}"),
            _cell(seconds, "{:.1f}"),
        ]
        rows.append(f"<tr class='{html.escape(s.status)}'>{''.join(cells)}</tr>")
    rows.append("</tbody></table>")
    return "\n".join(rows)


def _cell(value: Any, form: str) -> str:
    return "<td></td>" if value is None or value == "" else f"<td>{html.escape(form.format(value))}</td>"


def _anchor(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def _slide_card(s: ReportSlide) -> str:
    summary, scoring = s.summary, s.summary.get("scoring") or {}
    spot = scoring.get("hot_spot")
    lines = [f"{summary.get('nuclei', 0):,} nuclei, labelling index {summary.get('labelling_index_percent', 0):.1f}%"]
    if spot:
        lines.append(f"hot spot ({spot['shape']}, {spot['area_mm2']:g} mm²) {spot['labelling_index_percent']:.1f}% "
                     f"({spot['positive']} / {spot['nuclei']}) at x {spot['centre_x_um']:.0f} µm, "
                     f"y {spot['centre_y_um']:.0f} µm")
    if scoring.get("h_score") is not None:
        counts = scoring.get("intensity_counts", {})
        lines.append(f"H-score {scoring['h_score']:.0f} ("
                     + ", ".join(f"{k} {counts.get(k, 0)}" for k in INTENSITY_CLASSES) + ")")
    regions = scoring.get("regions") or {}
    region_rows = "".join(
        f"<tr><td class='name'>{html.escape(name)}</td><td>{r['nuclei']:,}</td>"
        f"<td>{r['labelling_index_percent']:.1f}</td>"
        f"<td>{'' if not r.get('hot_spot') else format(r['hot_spot']['labelling_index_percent'], '.1f')}</td>"
        f"<td>{'' if r.get('h_score') is None else format(r['h_score'], '.0f')}</td></tr>"
        for name, r in regions.items()
    )
    region_table = (
        "<table><tr><th class=name>Region</th><th>Nuclei</th><th>LI %</th><th>Hot-spot LI %</th>"
        f"<th>H-score</th></tr>{region_rows}</table>" if regions else ""
    )
    image = (f"<img alt='overlay of {html.escape(s.slide)}' src='data:image/jpeg;base64,{_thumbnail(s.overlay)}'>"
             if s.overlay else "<p>(no overlay)</p>")
    return (f"<div class='card' id='slide-{_anchor(s.slide)}'><h3>{html.escape(s.slide)}</h3>{image}"
            + "".join(f"<div>{html.escape(line)}</div>" for line in lines) + region_table + "</div>")


def _thumbnail(path: Path | None) -> str:
    """The overlay shrunk to the page's thumbnail width, as base64 JPEG."""
    from PIL import Image

    assert path is not None
    with Image.open(path) as picture:
        rgb = picture.convert("RGB")
        if rgb.width > THUMBNAIL_PX:
            rgb = rgb.resize((THUMBNAIL_PX, round(rgb.height * THUMBNAIL_PX / rgb.width)), Image.Resampling.LANCZOS)
        buffer = io.BytesIO()
        rgb.save(buffer, format="JPEG", quality=85)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _figure(caption: str, svg: str) -> str:
    return f"<figure><figcaption>{html.escape(caption)}</figcaption>{svg}</figure>"


def _new_figure(width: float = 5.0, height: float = 3.0) -> tuple[Figure, Any]:
    figure = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    return figure, figure.add_subplot()


def _svg(figure: Figure) -> str:
    buffer = io.StringIO()
    figure.savefig(buffer, format="svg")
    text = buffer.getvalue()
    return text[text.index("<svg"):]  # drop the XML prolog and DOCTYPE (not allowed inside HTML)


def _index_plot(done: Sequence[ReportSlide]) -> str:
    names = [s.slide for s in done]
    overall = [s.summary.get("labelling_index_percent") or 0.0 for s in done]
    hot = [s.summary.get("hotspot_labelling_index_percent") or 0.0 for s in done]
    figure, axes = _new_figure(min(14.0, max(4.0, 0.5 * len(done) + 2)), 3.0)
    x = np.arange(len(done))
    axes.bar(x - 0.2, overall, 0.4, label="global", color=_hex(CLASS_COLOURS["2+"]))
    axes.bar(x + 0.2, hot, 0.4, label="hot spot", color="#e000e0")
    if len(done) <= 40:
        axes.set_xticks(x, names, rotation=45 if len(done) > 4 else 0, ha="right" if len(done) > 4 else "center")
    else:
        axes.set_xlabel(f"{len(done)} slides, in the table's order")
    axes.set_ylabel("labelling index (%)")
    axes.set_ylim(0, 100)
    axes.legend(frameon=False)
    return _svg(figure)


def _histogram_plot(done: Sequence[ReportSlide], key: str, label: str, *, thresholds: Sequence[float] = ()) -> str:
    figure, axes = _new_figure()
    for s in done:
        histogram = ((s.summary.get("scoring") or {}).get("histograms") or {}).get(key)
        if not histogram or not sum(histogram["counts"]):
            continue
        counts = np.asarray(histogram["counts"], float)
        axes.stairs(counts / counts.sum(), histogram["edges"], label=s.slide)
    for value, name in zip(thresholds, INTENSITY_CLASSES[1:], strict=False):
        axes.axvline(value, color=_hex(CLASS_COLOURS[name]), linestyle="--", linewidth=1)
        axes.annotate(name, (value, 1), xycoords=("data", "axes fraction"), ha="left", va="top", fontsize=8)
    axes.set_xlabel(label)
    axes.set_ylabel("share of nuclei")
    if len(done) <= 8:
        axes.legend(frameon=False, fontsize=7)
    return _svg(figure)


def _thresholds(done: Sequence[ReportSlide]) -> list[float]:
    """The intensity class bounds of the first slide that records them."""
    for s in done:
        bounds = (s.summary.get("scoring") or {}).get("intensity_bounds")
        if bounds:
            return list(bounds)
    return []


def _time_plot(done: Sequence[ReportSlide]) -> str:
    stages: list[str] = []
    for s in done:
        stages += [k for k in (s.summary.get("seconds") or {}) if k not in stages]
    figure, axes = _new_figure(5.0, min(30.0, max(2.4, 0.3 * len(done) + 1.6)))
    left = np.zeros(len(done))
    y = np.arange(len(done))
    for stage in stages:
        values = np.array([(s.summary.get("seconds") or {}).get(stage, 0.0) for s in done])
        axes.barh(y, values, left=left, label=stage)
        left += values
    axes.set_yticks(y, [s.slide for s in done])
    axes.invert_yaxis()
    axes.set_xlabel("seconds")
    figure.legend(frameon=False, fontsize=7, loc="outside lower center", ncol=min(len(stages), 5))
    return _svg(figure)


def _hex(colour: tuple[int, int, int]) -> str:
    return "#{:02x}{:02x}{:02x}".format(*colour)
