"""``nucflow segment``: options in, :func:`nucflow.pipeline.segment` called, outcome reported."""

from __future__ import annotations

import signal
import sys
from pathlib import Path
from typing import Any, NoReturn

import click

from nucflow._cli import OutputLocation
from nucflow.errors import NucflowError
from nucflow.methods import METHODS

__all__ = ["segment"]


@click.command()
@click.argument("slides", nargs=-1)
@click.option("-o", "--out", type=OutputLocation(), required=True,
              help="Output folder: OUT/<slide>/ per slide and OUT/summary.csv.")
@click.option("--config", "config_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Segment settings YAML (default: the shipped nucflow/configs/segment.yaml).")
@click.option("--cluster-config", type=click.Path(dir_okay=False, path_type=Path),
              help="Actors, batch sizes and local Ray settings (default: the shipped nucflow/configs/cluster.yaml).")
@click.option("--method", type=click.Choice(METHODS),
              help="unet (trained model, default) or one of the paper's baselines.")
@click.option("--model", type=click.Path(path_type=Path), help="Model .safetensors (card beside it) or folder.")
@click.option("--mpp", type=float,
              help="Level-0 µm/px, for slides without it in their metadata (overrides it, with a warning).")
@click.option("--force-mpp", is_flag=True,
              help="Use --mpp even when it is more than 2x from a slide's metadata (refused otherwise).")
@click.option("--stain", "stain_profile",
              help="Stain profile: ki67, her2, or a YAML path (default: the model card's; ki67 for baselines).")
@click.option("--geojson", "geojson", flag_value="plain", type=str, default=None,
              help="Also write nuclei.geojson for QuPath (detections classified Negative/1+/2+/3+).")
@click.option("--geojson-gz", "geojson", flag_value="gz", help="The same, gzipped: nuclei.geojson.gz.")
@click.option("--overwrite", is_flag=True, help="Redo slides already (partly) done instead of resuming.")
@click.option("--address", envvar="RAY_ADDRESS", help="Ray cluster address (HEAD:6379); default: a local Ray.")
@click.option("--roi", type=click.Path(path_type=Path),
              help="Regions of interest: a QuPath GeoJSON export or mask image (one slide), or a folder of "
                   "<slide>.geojson / <slide>.png files; only those regions are segmented and scored.")
@click.option("--roi-exclude", multiple=True, default=("Ignore*",), show_default=True,
              help="Annotation class or name (glob) whose areas are left out; repeat for more (given, it "
                   "replaces the default: add --roi-exclude 'Ignore*' to keep it).")
@click.option("--demo", is_flag=True, help="Add the built-in demo slide (scikit-image's IHC image as an SVS).")
@click.option("-q", "--quiet", is_flag=True, help="No progress bars.")
def segment(slides: tuple[str, ...], out: Path, config_path: Path | None, cluster_config: Path | None,
            demo: bool, quiet: bool, stain_profile: str | None, **options: Any) -> None:
    """Segment every nucleus of SLIDES (paths or quoted globs) into per-slide tables."""
    from dataclasses import replace

    from nucflow.cluster import load_cluster_config
    from nucflow.pipeline import load_segment_config
    from nucflow.pipeline import segment as run_segment

    try:
        config = load_segment_config(config_path)
        if stain_profile:
            config = replace(config, stain_profile=stain_profile)
        inputs = [*slides, *([str(_demo_slide(out))] if demo else [])]
        if not inputs:
            raise click.UsageError("give at least one slide (or --demo)")
        with _ProgressBars(enabled=not quiet) as bars:
            result = run_segment(
                inputs, out, config=config, cluster_config=load_cluster_config(cluster_config),
                progress=bars.update, **options,
            )
    except NucflowError as exc:
        raise click.ClickException(str(exc)) from exc
    except KeyboardInterrupt as exc:  # Ctrl-C, or SIGTERM in the Ray session (cluster.Interrupted)
        _stopped(exc, out)
    _report(result)


def _stopped(exc: KeyboardInterrupt, out: Path) -> NoReturn:
    """One line, and the shell's status for a process stopped by a signal: 128 + its number."""
    signum = getattr(exc, "signum", signal.SIGINT)
    click.echo(f"nucflow segment: stopped by {signal.Signals(signum).name}; finished tiles are kept in {out}, "
               "rerun the same command to resume", err=True)
    raise SystemExit(128 + signum)


def _demo_slide(out: Path) -> Path:
    from nucflow.storage import cache_dir, is_uri

    base = cache_dir().parent if is_uri(out) else Path(out)  # outputs in a bucket: the demo slide stays local
    path = base / "_demo" / "ihc-demo.svs"
    if path.is_file():
        return path
    from nucflow.slide.synthetic import write_demo_slide

    return write_demo_slide(path)


def _report(result: Any) -> None:
    for s in result.slides:
        if s.status == "ok":
            m = s.summary
            scores = ""
            if m.get("hotspot_labelling_index_percent") is not None:
                scores += f", hot spot {m['hotspot_labelling_index_percent']:.1f}%"
            if m.get("h_score") is not None:
                scores += f", H-score {m['h_score']:.0f}"
            click.echo(f"{s.slide}: {m['nuclei']} nuclei, {m['positive']} positive "
                       f"(labelling index {m['labelling_index_percent']:.1f}%{scores}), "
                       f"{m['tissue_area_mm2']:.3f} mm² tissue")
        elif s.status == "skipped":
            click.echo(f"{s.slide}: already done with this configuration (skipped; --overwrite redoes it)")
    from nucflow.storage import published_uri

    where = published_uri(result.out) or result.out  # outputs in a bucket: their URI, not the staging
    click.echo(f"summary: {where}/summary.csv")
    click.echo(f"report: {where}/report.html")
    if result.failed:
        for s in result.failed:
            where = f" [details: {s.error_log}]" if s.error_log else ""
            click.echo(f"FAILED {s.slide} ({s.path}): {s.error}{where}", err=True)
        names = ", ".join(s.slide for s in result.failed)
        raise click.ClickException(f"{len(result.failed)} slide(s) failed: {names}")


class _ProgressBars:
    """One bar over all tiles of all slides, then one over the slides being finished."""

    def __init__(self, *, enabled: bool) -> None:
        self.enabled = enabled and sys.stderr.isatty()
        self.bars: dict[str, Any] = {}

    def __enter__(self) -> _ProgressBars:
        return self

    def __exit__(self, *exc: object) -> None:
        for bar in self.bars.values():
            bar.close()

    def update(self, event: Any) -> None:
        if not self.enabled:
            return
        from tqdm import tqdm

        bar = self.bars.get(event.stage)
        if bar is None:
            label = {"tiles": "tiles", "slides": "post-processing"}.get(event.stage, event.stage)
            bar = tqdm(total=event.total, desc=label, unit=event.stage[:-1], dynamic_ncols=True)
            self.bars[event.stage] = bar
        if bar.total != event.total:  # slides planned while the first ones run add tiles
            bar.total = event.total
        bar.set_postfix_str(event.slide, refresh=False)
        bar.update(event.done - bar.n)
