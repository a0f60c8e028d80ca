"""The cohort report: ``out/report.html``, one self-contained page for a run.

A table of slides (status, error, nuclei, tissue, labelling index global and in the hot
spot, H-score, time), plots (labelling index across the cohort, nucleus area and DAB
intensity distributions, time per stage) as inline SVG, and each slide's QC overlay as a
small inline JPEG with its hot spot marked, linked to the full ``overlay.png`` by relative
path. No script, stylesheet, font or image is fetched: the page opens from a disk, a mail
attachment or an archive without a network (the full overlays open from the output folder).

The page grows slowly with the cohort: the thumbnails share a fixed pixel budget
(:data:`PAGE_THUMBNAIL_PIXELS`, each between :data:`MIN_THUMBNAIL_PIXELS` and
:data:`THUMBNAIL_PIXELS`), and past a few slides the distributions are drawn as the cohort's
median and 10-90th percentile band, and the time per stage as one box per stage, instead of
one line or bar per slide.
"""

from __future__ import annotations

import base64
import csv
import datetime
import html
import io
import json
import math
import os
import urllib.parse
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

#: Most pixels of one slide's overlay thumbnail (480 x 360: the whole width of a small cohort's card).
THUMBNAIL_PIXELS = 480 * 360
#: The pixels all thumbnails of a page share: past 18 slides each gets less, down to ...
PAGE_THUMBNAIL_PIXELS = 3_000_000
#: ... this floor (160 x 120), so a cohort of 1,000 slides still shows each one.
MIN_THUMBNAIL_PIXELS = 160 * 120
#: JPEG quality of the thumbnails.
THUMBNAIL_QUALITY = 75
#: Up to this many slides the distributions have one line per slide (with a legend); past it,
#: the cohort's median and 10-90th percentile band.
LINES_MAX_SLIDES = 8
#: Up to this many slides the time plot has one bar per slide; past it, one box per stage.
BARS_MAX_SLIDES = 40


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
    path = Path(path)
    done = [s for s in slides if s.summary]
    pixels = thumbnail_pixels(sum(s.overlay is not None for s in done))
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
                  _figure("Labelling index per slide" if len(done) <= BARS_MAX_SLIDES
                          else "Labelling index across the cohort", _index_plot(done)),
                  _figure("Nucleus area", _histogram_plot(done, "area_um2", "nucleus area (µm²; last bin: larger)")),
                  _figure("Nucleus DAB intensity", _histogram_plot(done, "dab_od", "mean DAB optical density",
                                                                   thresholds=_thresholds(done))),
                  _figure("Time per stage", _time_plot(done)), "</div>"]
        parts += ["<h2>Slides</h2>"] + [_slide_card(s, page=path.parent, pixels=pixels) for s in done]
    parts.append("</body></html>\n")
    return write_text(path, "\n".join(parts))


def thumbnail_pixels(count: int) -> int:
    """Pixels of each of ``count`` thumbnails: :data:`PAGE_THUMBNAIL_PIXELS` shared, within
    [:data:`MIN_THUMBNAIL_PIXELS`, :data:`THUMBNAIL_PIXELS`]."""
    return max(MIN_THUMBNAIL_PIXELS, min(THUMBNAIL_PIXELS, PAGE_THUMBNAIL_PIXELS // max(count, 1)))


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
th {{ background: #f0f0f0; }} .scroll th {{ position: sticky; top: 0; }}
td.name, td.error, th.name {{ text-align: left; }}
td.error {{ color: #a00; max-width: 40em; }}
tr.failed td {{ background: #fff0f0; }}
.scroll {{ max-height: 70vh; overflow-y: auto; display: inline-block; }}
.plots {{ display: flex; flex-wrap: wrap; gap: 1em; }}
figure {{ margin: 0; }} figcaption {{ font-weight: 600; font-size: 0.9em; }}
.card {{ display: inline-block; vertical-align: top; margin: 0 1em 1em 0; }}
.card img {{ max-width: 100%; border: 1px solid #ccc; display: block; }}
.card a.full {{ font-size: 0.85em; }}
</style></head><body>"""


def _status_counts(slides: Sequence[ReportSlide]) -> str:
    counts: dict[str, int] = {}
    for s in slides:
        counts[s.status] = counts.get(s.status, 0) + 1
    return ", ".join(f"{n} {status}" for status, n in sorted(counts.items())) or "none"


_COLUMNS = ("Slide", "Status", "Error", "Nuclei", "Tissue mm²", "LI %", "Hot-spot LI %", "H-score", "Time s")


def _table(slides: Sequence[ReportSlide]) -> str:
    rows = ["<div class='scroll'><table id='slides'><thead><tr>"
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
    rows.append("</tbody></table></div>")
    return "\n".join(rows)


def _cell(value: Any, form: str) -> str:
    return "<td></td>" if value is None or value == "" else f"<td>{html.escape(form.format(value))}</td>"


def _anchor(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def _slide_card(s: ReportSlide, *, page: Path, pixels: int) -> str:
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
    vectors = scoring.get("stain_vectors") or {}
    if vectors.get("method") == "macenko":
        lines.append(f"stain vectors estimated (Macenko): hematoxylin {vectors['hematoxylin']}, DAB {vectors['dab']}")
    elif vectors.get("method") == "given":
        lines.append(f"stain vectors given: hematoxylin {vectors['hematoxylin']}, DAB {vectors['dab']}")
    elif vectors.get("note"):
        lines.append(f"fixed stain vectors ({vectors['note']})")
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
    image = "<p>(no overlay)</p>"
    if s.overlay:
        data, width, height = _thumbnail(s.overlay, pixels)
        link = html.escape(_relative_url(s.overlay, page), quote=True)
        image = (f"<a href='{link}'><img alt='overlay of {html.escape(s.slide)}' width='{width}' height='{height}' "
                 f"src='data:image/jpeg;base64,{data}'></a><a class='full' href='{link}'>full overlay</a>")
    return (f"<div class='card' id='slide-{_anchor(s.slide)}'><h3>{html.escape(s.slide)}</h3>{image}"
            + "".join(f"<div>{html.escape(line)}</div>" for line in lines) + region_table + "</div>")


def _thumbnail(path: Path, pixels: int) -> tuple[str, int, int]:
    """The overlay shrunk to at most ``pixels`` pixels (its aspect kept), as base64 JPEG, with
    its width and height."""
    from PIL import Image

    with Image.open(path) as picture:
        scale = min(1.0, math.sqrt(pixels / (picture.width * picture.height)))
        size = (max(1, math.floor(picture.width * scale)), max(1, math.floor(picture.height * scale)))
        picture.draft("RGB", size)  # a JPEG decodes at a reduced size; a PNG ignores this
        rgb = picture.convert("RGB")
        if rgb.size != size:
            rgb = rgb.resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0)
        buffer = io.BytesIO()
        rgb.save(buffer, format="JPEG", quality=THUMBNAIL_QUALITY, optimize=True)
    return base64.b64encode(buffer.getvalue()).decode("ascii"), size[0], size[1]


def _relative_url(target: Path, page: Path) -> str:
    """``target``'s path from the folder of the page, as a relative URL (so the page and its
    output folder move together)."""
    relative = Path(os.path.relpath(Path(target).resolve(), Path(page).resolve()))
    return urllib.parse.quote(relative.as_posix())


def _figure(caption: str, svg: str) -> str:
    return f"<figure><figcaption>{html.escape(caption)}</figcaption>{svg}</figure>"


def _new_figure(width: float = 5.0, height: float = 3.0) -> tuple[Figure, Any]:
    figure = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    return figure, figure.add_subplot()


def _svg(figure: Figure) -> str:
    import matplotlib

    buffer = io.StringIO()
    with matplotlib.rc_context({"svg.fonttype": "none"}):  # text as text, not one path per glyph
        figure.savefig(buffer, format="svg")
    text = buffer.getvalue()
    return text[text.index("<svg"):]  # drop the XML prolog and DOCTYPE (not allowed inside HTML)


def _index_plot(done: Sequence[ReportSlide]) -> str:
    names = [s.slide for s in done]
    overall = [s.summary.get("labelling_index_percent") or 0.0 for s in done]
    hot = [s.summary.get("hotspot_labelling_index_percent") or 0.0 for s in done]
    colours = {"global": _hex(CLASS_COLOURS["2+"]), "hot spot": "#e000e0"}
    if len(done) > BARS_MAX_SLIDES:  # how many slides at each index: readable at any cohort size
        figure, axes = _new_figure()
        edges = np.linspace(0.0, 100.0, 21)
        axes.stairs(np.histogram(np.clip(overall, 0, 100), bins=edges)[0], edges, label="global",
                    color=colours["global"], fill=True, alpha=0.6)
        axes.stairs(np.histogram(np.clip(hot, 0, 100), bins=edges)[0], edges, label="hot spot",
                    color=colours["hot spot"], linewidth=2)
        axes.set_xlabel("labelling index (%)")
        axes.set_ylabel(f"slides (of {len(done)})")
        axes.legend(frameon=False, loc="upper right")
        return _svg(figure)
    figure, axes = _new_figure(min(10.0, max(4.0, 0.5 * len(done) + 2)), 3.0)
    x = np.arange(len(done))
    axes.bar(x - 0.2, overall, 0.4, label="global", color=colours["global"])
    axes.bar(x + 0.2, hot, 0.4, label="hot spot", color=colours["hot spot"])
    axes.set_xticks(x, names, rotation=45 if len(done) > 4 else 0, ha="right" if len(done) > 4 else "center")
    axes.set_ylabel("labelling index (%)")
    axes.set_ylim(0, 100)
    axes.legend(frameon=False, loc="upper right")
    return _svg(figure)


def _histogram_plot(done: Sequence[ReportSlide], key: str, label: str, *, thresholds: Sequence[float] = ()) -> str:
    figure, axes = _new_figure()
    shares: list[tuple[str, np.ndarray, list[float]]] = []
    for s in done:
        histogram = ((s.summary.get("scoring") or {}).get("histograms") or {}).get(key)
        if histogram and sum(histogram["counts"]):
            counts = np.asarray(histogram["counts"], float)
            shares.append((s.slide, counts / counts.sum(), list(histogram["edges"])))
    if len(shares) <= LINES_MAX_SLIDES:
        for name, share, edges in shares:
            axes.stairs(share, edges, label=name)
        if shares:
            axes.legend(frameon=False, fontsize=7, loc="upper right")
    else:  # one band for the cohort (the slides whose bins are the first's)
        edges = shares[0][2]
        table = np.array([share for _, share, e in shares if e == edges])
        low, median, high = np.percentile(table, [10, 50, 90], axis=0)
        axes.stairs(high, edges, baseline=low, fill=True, alpha=0.3, color="#4060c0",
                    label=f"10-90th percentile of {len(table)} slides")
        axes.stairs(median, edges, color="#203080", label="median")
        axes.legend(frameon=False, fontsize=7, loc="upper right")
    for value, name in zip(thresholds, INTENSITY_CLASSES[1:], strict=False):
        axes.axvline(value, color=_hex(CLASS_COLOURS[name]), linestyle="--", linewidth=1)
        axes.annotate(name, (value, 1), xycoords=("data", "axes fraction"), ha="left", va="top", fontsize=8)
    axes.set_xlabel(label)
    axes.set_ylabel("share of nuclei")
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
    if len(done) > BARS_MAX_SLIDES:  # one box per stage: its seconds over the slides
        figure, axes = _new_figure(5.0, max(2.4, 0.35 * len(stages) + 1.2))
        per_stage = [[(s.summary.get("seconds") or {}).get(stage, 0.0) for s in done] for stage in stages]
        axes.boxplot(per_stage, orientation="horizontal", tick_labels=stages, flierprops={"markersize": 3})
        axes.invert_yaxis()
        axes.set_xlabel(f"seconds per slide ({len(done)} slides)")
        return _svg(figure)
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
