"""The cohort report: its HTML content, and what a real headless browser shows of it, offline."""

from __future__ import annotations

import html.parser
import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from skimage.io import imread

from nucflow.postprocess import PostprocessConfig
from nucflow.postprocess._writers import render_overlay
from nucflow.report import ReportSlide, slides_of_folder, write_report
from nucflow.scoring import ScoreAccumulator

BROWSERS = ("chromium-headless-shell", "chromium", "chromium-browser", "google-chrome", "chrome-headless-shell")


def _slide_folder(out: Path, name: str, seed: int) -> dict:
    """A finished slide's folder: summary.json from real scores, overlay.png with a green block."""
    rng = np.random.default_rng(seed)
    n = 400
    part = {"centroid_x_um": rng.uniform(0, 1500, n), "centroid_y_um": rng.uniform(0, 1000, n),
            "dab_intensity": rng.choice(4, n, p=[0.6, 0.2, 0.1, 0.1]).astype(np.int8),
            "area_um2": rng.uniform(10, 90, n), "dab_od": rng.uniform(0, 1, n)}
    scores = ScoreAccumulator(PostprocessConfig())
    scores.add(part, np.where(part["centroid_x_um"] < 700, "tumour", "stroma"))
    scoring = scores.summary(um_per_level0_px=1.0)
    summary = {"slide": name, "status": "ok", "nuclei": n, "positive": scoring["positive"],
               "labelling_index_percent": scoring["labelling_index_percent"],
               "hotspot_labelling_index_percent": scoring["hot_spot"]["labelling_index_percent"],
               "h_score": scoring["h_score"], "tissue_area_mm2": 1.5, "scoring": scoring,
               "seconds": {"plan": 1.0, "inference": 10.0 + seed, "postprocess": 3.0}}
    folder = out / name
    folder.mkdir(parents=True)
    (folder / "summary.json").write_text(json.dumps(summary))
    thumbnail = np.full((100, 150, 3), 235, np.uint8)
    thumbnail[10:40, 10:60] = (0, 200, 0)  # a block the screenshot must show
    render_overlay(thumbnail, level0_scale=10.0, tissue_mask=None, nuclei=_no_nuclei(), path=folder / "overlay.png",
                   mpp=10.0, hot_spot=scoring["hot_spot"])
    return summary


def _no_nuclei():
    from nucflow.postprocess import empty_table

    return empty_table()


class _Page(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.references: list[str] = []
        self.rows: list[list[str]] = []
        self.images = 0
        self._table = self._row = None
        self._depth = 0
        self._text = ""

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.references += [v for k, v in attrs.items() if k in ("src", "href", "xlink:href") and v]
        if tag == "img":
            self.images += 1
        if tag == "table" and attrs.get("id") == "slides":
            self._table = True
        if self._table and tag == "tr":
            self._row = []
        if self._row is not None and tag == "td":
            self._text = ""

    def handle_data(self, data):
        self._text += data

    def handle_endtag(self, tag):
        if self._row is not None and tag == "td":
            self._row.append(self._text.strip())
        if self._row is not None and tag == "tr":
            if self._row:
                self.rows.append(self._row)
            self._row = None
        if tag == "table":
            self._table = False


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict, dict]:
    out = tmp_path_factory.mktemp("cohort")
    first, second = _slide_folder(out, "slide-a", 1), _slide_folder(out, "slide-b", 2)
    slides = slides_of_folder(out) + [
        ReportSlide("broken", "failed", error="SlideError: broken.svs is not a slide <b>&</b>")
    ]
    return write_report(out / "report.html", slides), first, second


def test_report_content_is_a_table_of_every_slide_with_its_figures(report) -> None:
    path, first, second = report
    text = path.read_text()
    page = _Page()
    page.feed(text)
    assert [row[:2] for row in page.rows] == [["slide-a", "ok"], ["slide-b", "ok"], ["broken", "failed"]]
    a = page.rows[0]
    assert a[3] == "400" and a[4] == "1.500"
    assert a[5] == f"{first['labelling_index_percent']:.1f}"
    assert a[6] == f"{first['hotspot_labelling_index_percent']:.1f}"
    assert a[7] == f"{first['h_score']:.0f}" and a[8] == f"{1 + 11 + 3:.1f}"
    assert page.rows[2][2] == "SlideError: broken.svs is not a slide <b>&</b>"  # escaped, shown as text
    assert "<b>&</b>" not in text
    assert page.images == 2  # one overlay per finished slide, none for the failed one
    assert text.count("<svg") == 4  # index, area, DAB, time plots
    assert "tumour" in text and "stroma" in text  # per-region rows
    # self-contained: every reference is inline data, an anchor in the page, or (the full
    # overlays) a relative path to a file of the output folder
    assert page.references and all(r.startswith(("data:", "#")) or _local_file(path, r) for r in page.references)
    links = [r for r in page.references if not r.startswith(("data:", "#"))]
    assert sorted(set(links)) == ["slide-a/overlay.png", "slide-b/overlay.png"]
    assert not re.search(r"<(script|link|iframe|object|embed)\b", text) and "@import" not in text
    assert all(target.startswith("#") for target in re.findall(r"url\(([^)]*)\)", text))  # SVG clip paths


def _local_file(page: Path, reference: str) -> bool:
    """A relative URL naming a file beside ``page`` or under its folder (no scheme, no host)."""
    from urllib.parse import unquote, urlsplit

    parts = urlsplit(reference)
    target = (page.parent / unquote(parts.path)).resolve()
    return not parts.scheme and not parts.netloc and not parts.path.startswith("/") and target.is_file() \
        and page.parent.resolve() in target.parents


def test_report_of_a_large_cohort_stays_small(tmp_path: Path) -> None:
    """Thumbnails share a fixed pixel budget (each at most thumbnail_pixels(n) pixels), the
    cohort plots are bands and boxes instead of a line or bar per slide, and each card links
    its full overlay: the page grows by a few KB per slide, not by its overlay."""
    import base64
    import io

    from PIL import Image

    from nucflow.report import MIN_THUMBNAIL_PIXELS, THUMBNAIL_PIXELS, thumbnail_pixels

    assert thumbnail_pixels(1) == THUMBNAIL_PIXELS and thumbnail_pixels(100_000) == MIN_THUMBNAIL_PIXELS
    assert thumbnail_pixels(20) > thumbnail_pixels(60) > thumbnail_pixels(300)
    n = 60
    summary = _slide_folder(tmp_path, "first", 3)
    noise = np.random.default_rng(0).integers(0, 256, (700, 560, 3), np.uint8)  # worst case for JPEG
    Image.fromarray(noise).save(tmp_path / "noise.png")
    for i in range(n):
        folder = tmp_path / f"s{i:03d}"
        folder.mkdir()
        (folder / "summary.json").write_text(json.dumps({**summary, "slide": folder.name}))
        (folder / "overlay.png").hardlink_to(tmp_path / "noise.png")
    slides = [s for s in slides_of_folder(tmp_path) if s.slide != "first"]
    path = write_report(tmp_path / "report.html", slides)
    text = path.read_text()
    images = re.findall(r"src='data:image/jpeg;base64,([^']+)'", text)
    assert len(images) == n
    budget = thumbnail_pixels(n)
    for data in images[:5]:
        with Image.open(io.BytesIO(base64.b64decode(data))) as thumb:
            assert 0.95 * budget <= thumb.width * thumb.height <= budget
            assert thumb.width / thumb.height == pytest.approx(560 / 700, rel=0.02)
    without_images = len(text) - sum(len(d) for d in images)
    assert without_images < 250_000  # table, plots, cards: a few KB per slide
    assert "10-90th percentile of 60 slides" in text and "seconds per slide (60 slides)" in text
    page = _Page()
    page.feed(text)
    assert all(r.startswith(("data:", "#")) or _local_file(path, r) for r in page.references)
    assert sum(r.endswith("/overlay.png") for r in page.references) == 2 * n  # the image and "full overlay"


def test_report_rewritten_for_a_resumed_run_reads_skipped_slides_summaries(report) -> None:
    path, first, _ = report
    from nucflow.pipeline.run import SlideResult

    results = [SlideResult("slide-a", "x", "skipped"), SlideResult("broken", "y", "failed", error="boom")]
    slides = slides_of_folder(path.parent, results)
    assert slides[0].summary["nuclei"] == first["nuclei"] and slides[0].overlay is not None
    assert slides[1].summary == {} and slides[1].overlay is None


def _browser() -> str:
    for name in BROWSERS:
        found = shutil.which(name)
        if found:
            return found
    pytest.skip("no headless Chromium here (install Debian's chromium-headless-shell to run this test)")


def test_a_headless_browser_shows_the_report_offline(report, tmp_path: Path) -> None:
    path, _, _ = report
    browser = _browser()
    common = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
              "--host-resolver-rules=MAP * ~NOTFOUND", "--no-proxy-server", "--user-data-dir=" + str(tmp_path / "u")]
    dom = subprocess.run([*common, "--dump-dom", path.as_uri()], capture_output=True, text=True, timeout=120,
                         check=True).stdout
    page = _Page()
    page.feed(dom)
    assert [row[1] for row in page.rows] == ["ok", "ok", "failed"]
    shot = tmp_path / "shot.png"
    subprocess.run([*common, f"--screenshot={shot}", "--window-size=1280,2400", path.as_uri()],
                   capture_output=True, timeout=120, check=True)
    picture = imread(shot)[..., :3].astype(int)
    red, green, blue = picture[..., 0], picture[..., 1], picture[..., 2]
    green_block = (green > 150) & (red < 60) & (blue < 60)  # the thumbnails' block: inline JPEGs decoded
    assert green_block.sum() > 2 * 200
    magenta = (red > 180) & (blue > 180) & (green < 80)  # hot-spot bars of the SVG plot and the marks
    assert magenta.sum() > 200
    failed_row = (red > 250) & (green > 235) & (green < 245) & (blue > 235) & (blue < 245)  # #fff0f0
    assert failed_row.sum() > 1000


def test_nucflow_report_rebuilds_the_page_from_an_output_folder(report, tmp_path: Path) -> None:
    from click.testing import CliRunner

    from nucflow.cli import main

    out = report[0].parent
    (out / "summary.csv").write_text(
        "slide,path,status,error\nslide-b,b.svs,skipped,\nlost,l.svs,failed,SlideError: gone\n")
    page = tmp_path / "again.html"
    result = CliRunner().invoke(main, ["report", str(out), "--html", str(page)])
    assert result.exit_code == 0, result.output
    parsed = _Page()
    parsed.feed(page.read_text())
    # the last run's slides first (its status and error), then other finished folders
    assert [row[:3] for row in parsed.rows] == [
        ["slide-b", "skipped", ""], ["lost", "failed", "SlideError: gone"], ["slide-a", "ok", ""]]
    assert "regions:" in result.output and (out / "regions.csv").is_file()
    empty = tmp_path / "empty"
    empty.mkdir()
    refused = CliRunner().invoke(main, ["report", str(empty)])
    assert refused.exit_code == 1 and "nothing to report" in refused.output


def test_each_card_says_which_stain_vectors_were_used(tmp_path: Path) -> None:
    """A slide's estimated vectors, or why the estimate was rejected, are on its card (the
    fixed default says nothing)."""
    from nucflow.stain import FIXED, StainVectors

    summary = _slide_folder(tmp_path, "plain", 4)
    estimated = StainVectors((0.8, 0.53, 0.27), (0.41, 0.57, 0.71), method="macenko")
    rejected = StainVectors(FIXED.hematoxylin, FIXED.dab, method="fixed",
                            note="Macenko estimate rejected: 12 stained pixels <fewer> than 2000")
    slides = [ReportSlide("plain", "ok", summary=summary)]
    for name, vectors in (("estimated", estimated), ("rejected", rejected)):
        slides.append(ReportSlide(name, "ok", summary={**summary, "slide": name, "scoring": {
            **summary["scoring"], "stain_vectors": vectors.summary()}}))
    text = write_report(tmp_path / "report.html", slides).read_text()
    assert text.count("stain vectors") == 2
    assert f"stain vectors estimated (Macenko): hematoxylin {list(estimated.hematoxylin)}" in text
    assert "fixed stain vectors (Macenko estimate rejected: 12 stained pixels &lt;fewer&gt; than 2000)" in text
