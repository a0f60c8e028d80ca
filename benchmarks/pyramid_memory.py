"""Memory of segmenting OME-TIFF pyramids of growing size, and the lazy TIFF reader against tiffslide.

Writes synthetic IHC-like OME-TIFF pyramids (tiled JPEG, reduced levels in SubIFDs, the
resolution in the OME-XML ``PhysicalSizeX``, as bfconvert/QuPath write them) of 4k x 4k and
16k x 16k pixels at 0.5 µm/px (the same tissue section on each, the rest glass), then
runs ``nucflow segment --method threshold`` on each in a fresh process and samples the
resident memory of that process and every process it starts (local Ray, the model actors,
the post-processing task) every 0.2 s. The claim checked: the
peak of the largest process, and of the whole tree, for 16k x 16k stays within 10% of 4k x 4k.

``--readers`` also times 200 random 512 x 512 level-0 region reads and a thumbnail through
nucflow's reader (tifffile's Zarr store) and through tiffslide, each in a fresh process.
``--thumbnail`` times the 1024 px thumbnail planning takes, and its peak memory, through the
lazy reader and through what nucflow did before it (OpenSlide's one-level ``generic-tiff``
view with ``--mpp``, which resamples the whole of level 0).

Usage::

    python benchmarks/pyramid_memory.py WORKDIR [--sides 4096 16384] [--readers] [--json OUT.json]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

MPP = 0.5
CELL = 40  # px between nuclei centres
RADIUS = 7.0  # nucleus radius, px
TISSUE = (1600, 1000)  # half-axes of the tissue section, px


def synthetic_region(side: int) -> Any:
    """Region function for :func:`nucflow.slide.synthetic.write_ome_pyramid`: one elliptic tissue
    section of the same size on every slide (3.2k x 2k px, 1.6 x 1 mm, centred; the rest is
    glass, as on a real slide) of pink stroma with hematoxylin- and DAB-coloured nuclei on a
    jittered grid, evaluated at each pixel's level-0 centre so every level shows the same."""

    def region(downsample: float, row: int, col: int, rows: int, cols: int) -> np.ndarray:
        y = (np.arange(row, row + rows) + 0.5) * downsample
        x = (np.arange(col, col + cols) + 0.5) * downsample
        yy, xx = np.meshgrid(y, x, indexing="ij")
        out = np.full((rows, cols, 3), 244, np.uint8)
        tissue = ((yy - side / 2) / TISSUE[0]) ** 2 + ((xx - side / 2) / TISSUE[1]) ** 2 < 1
        out[tissue] = (225, 190, 205)
        ci, cj = np.floor(yy / CELL).astype(np.int64), np.floor(xx / CELL).astype(np.int64)
        h = (ci * 73856093) ^ (cj * 19349663)
        jy = (h % 17 - 8).astype(np.float64)
        jx = ((h // 17) % 17 - 8).astype(np.float64)
        cy, cx = (ci + 0.5) * CELL + jy, (cj + 0.5) * CELL + jx
        nucleus = tissue & ((yy - cy) ** 2 + (xx - cx) ** 2 < (RADIUS + 0.5 * downsample) ** 2)
        positive = (h // 289) % 3 == 0
        out[nucleus & positive] = (120, 80, 45)
        out[nucleus & ~positive] = (70, 60, 130)
        return out

    return region


def write_slide(folder: Path, side: int) -> Path:
    from nucflow.slide.synthetic import write_ome_pyramid

    path = folder / f"synthetic-{side}.ome.tif"
    if not path.exists():
        levels = max(1, int(np.log2(side / 512)) + 1)
        write_ome_pyramid(path, (side, side), synthetic_region(side), mpp=MPP, levels=levels, tile=512)
    return path


_SEGMENT = """
import sys, json
from nucflow import segment
result = segment([sys.argv[1]], sys.argv[2], method="threshold", overwrite=True)
print(json.dumps([(s.status, s.error, s.summary.get("nuclei")) for s in result.slides]))
"""


def measure_segment(slide: Path, out: Path) -> dict[str, Any]:
    """Peak RSS (MiB) of the largest process and of the whole tree while segmenting ``slide``."""
    import psutil

    started = time.perf_counter()
    child = subprocess.Popen([sys.executable, "-c", _SEGMENT, str(slide), str(out)], stdout=subprocess.PIPE, text=True)
    parent = psutil.Process(child.pid)
    peak_each: dict[int, tuple[float, str]] = {}
    peak_total = 0.0
    while child.poll() is None:
        total = 0.0
        try:
            procs = [parent, *parent.children(recursive=True)]
        except psutil.NoSuchProcess:
            break
        for proc in procs:
            try:
                rss = proc.memory_info().rss / 2**20
                name = " ".join(proc.cmdline()[:2])[:60]
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
            total += rss
            if rss > peak_each.get(proc.pid, (0.0, ""))[0]:
                peak_each[proc.pid] = (rss, name)
        peak_total = max(peak_total, total)
        time.sleep(0.2)
    stdout = child.communicate()[0]
    if child.returncode != 0:
        raise RuntimeError(f"segment of {slide} exited {child.returncode}")
    largest = sorted(peak_each.values(), reverse=True)[:4]
    return {
        "slide": slide.name, "seconds": round(time.perf_counter() - started, 1),
        "result": json.loads(stdout.strip().splitlines()[-1]),
        "driver_peak_mib": round(peak_each[child.pid][0], 1),
        "largest_process_peak_mib": round(largest[0][0], 1), "largest_processes": largest,
        "tree_peak_mib": round(peak_total, 1),
    }


_READS = """
import sys, time, resource, json
import numpy as np
path, how = sys.argv[1], sys.argv[2]
rng = np.random.default_rng(0)
if how == "nucflow":
    from nucflow.slide import open_slide
    slide = open_slide(path)
    rows, cols = slide.size
    read = lambda r, c: slide.read(mpp=slide.mpp, row=r, col=c, rows=512, cols=512)
    thumb = lambda: slide.thumbnail(max_size=1024)
else:
    import tiffslide
    slide = tiffslide.TiffSlide(path)
    cols, rows = slide.dimensions
    read = lambda r, c: np.asarray(slide.read_region((c, r), 0, (512, 512)))
    thumb = lambda: slide.get_thumbnail((1024, 1024))
corners = rng.integers(0, [rows - 512, cols - 512], size=(200, 2))
t = time.perf_counter()
for r, c in corners:
    read(int(r), int(c))
reads = time.perf_counter() - t
t = time.perf_counter()
thumb()
print(json.dumps({"reader": how, "ms_per_512_read": round(1000 * reads / 200, 2),
                  "thumbnail_s": round(time.perf_counter() - t, 3),
                  "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}))
"""


_THUMBNAIL = """
import sys, time, resource, json
from pathlib import Path
import openslide
from nucflow.slide.reader import Slide, _Opened, _OpenSlideBackend, open_slide
path, how = sys.argv[1], sys.argv[2]
started = time.perf_counter()
if how == "before":
    slide = Slide(Path(path), _Opened(_OpenSlideBackend(openslide.OpenSlide(path)), None, "generic-tiff"), mpp=0.5)
else:
    slide = open_slide(path)
thumb, mpp = slide.thumbnail(max_size=1024)
print(json.dumps({"reader": how, "vendor": slide.vendor, "levels": len(slide._backend.level_shapes),
                  "seconds": round(time.perf_counter() - started, 2),
                  "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}))
"""


def measure_thumbnail(slide: Path) -> list[dict[str, Any]]:
    out = []
    for how in ("lazy", "before"):
        text = subprocess.run([sys.executable, "-c", _THUMBNAIL, str(slide), how], capture_output=True, text=True,
                              check=True).stdout
        out.append(json.loads(text.strip().splitlines()[-1]))
    return out


def measure_readers(slide: Path) -> list[dict[str, Any]]:
    results = []
    for how in ("nucflow", "tiffslide", "nucflow", "tiffslide"):  # interleaved, best of two
        text = subprocess.run([sys.executable, "-c", _READS, str(slide), how], capture_output=True, text=True,
                              check=True).stdout
        results.append(json.loads(text.strip().splitlines()[-1]))
    best: dict[str, dict[str, Any]] = {}
    for r in results:
        if r["reader"] not in best or r["ms_per_512_read"] < best[r["reader"]]["ms_per_512_read"]:
            best[r["reader"]] = r
    return list(best.values())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("workdir", type=Path)
    parser.add_argument("--sides", type=int, nargs="+", default=[4096, 16384])
    parser.add_argument("--readers", action="store_true")
    parser.add_argument("--thumbnail", action="store_true")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {"segment": [], "readers": [], "thumbnail": []}
    for side in args.sides:
        started = time.perf_counter()
        slide = write_slide(args.workdir, side)
        print(f"{slide.name}: {slide.stat().st_size / 2**20:.0f} MiB, written in {time.perf_counter() - started:.0f} s",
              flush=True)
        if args.readers:
            report["readers"].append({"slide": slide.name, "results": measure_readers(slide)})
            print(json.dumps(report["readers"][-1]), flush=True)
        if args.thumbnail:
            report["thumbnail"].append({"slide": slide.name, "results": measure_thumbnail(slide)})
            print(json.dumps(report["thumbnail"][-1]), flush=True)
        report["segment"].append(measure_segment(slide, args.workdir / f"out-{side}"))
        print(json.dumps(report["segment"][-1]), flush=True)
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
