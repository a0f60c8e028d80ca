"""``nucflow evaluate``: options in, :func:`nucflow.evaluation.evaluate` called, report written."""

from __future__ import annotations

from pathlib import Path

import click

from nucflow._cli import LocalFolder
from nucflow.errors import NucflowError
from nucflow.methods import METHODS

__all__ = ["evaluate"]

_DIR = click.Path(file_okay=False, path_type=Path)


@click.command()
@click.option("--images", type=_DIR, required=True, help="Folder of RGB tiles (PNG/TIFF/JPEG).")
@click.option("--truth", type=_DIR, required=True,
              help="Folder of ground truth paired with the images by file name: instance labels, binary "
                   "masks, DeepLIIF colour code, or point CSVs.")
@click.option("--pred", type=_DIR, help="Folder of predicted label images to score (reported as method 'pred').")
@click.option("--method", "methods", multiple=True, type=click.Choice(METHODS),
              help="Segment the images with this method; repeat to compare several side by side "
                   "(default, without --pred: unet, the bundled model).")
@click.option("--model", type=click.Path(path_type=Path), help="Model for --method unet (default: the bundled one).")
@click.option("--mpp", type=float, help="µm per pixel of the tiles (required to run a method; 0.25 at 40x).")
@click.option("--truth-format", type=click.Choice(["labels", "binary", "deepliif", "points"]),
              help="Force the truth format instead of detecting it per file.")
@click.option("--stain", "stain_profile",
              help="Stain profile (post-processing, DAB threshold): ki67, her2 or a YAML path "
                   "(default: the model card's for unet; ki67 for the baselines and --pred).")
@click.option("--sigma", type=float, help="Gaussian sigma (px) of the baselines (default: segment.yaml's).")
@click.option("--model-mpp", type=float, help="Run the model at this µm/px instead of its card's.")
@click.option("-o", "--out", type=LocalFolder(), required=True,
              help="Report folder: scores.csv, scores.json, scores.md.")
@click.option("-q", "--quiet", is_flag=True, help="Do not print the score table.")
def evaluate(images: Path, truth: Path, pred: Path | None, methods: tuple[str, ...], model: Path | None,
             mpp: float | None, truth_format: str | None, stain_profile: str | None, sigma: float | None,
             model_mpp: float | None, out: Path, quiet: bool) -> None:
    """Score segmentations against ground truth with the paper's metrics (per image, mean, pooled)."""
    from nucflow.evaluation import evaluate as run_evaluate
    from nucflow.evaluation import write_report

    try:
        report = run_evaluate(images, truth, pred=pred, methods=methods, model=model, mpp=mpp,
                              truth_format=truth_format, stain_profile=stain_profile, sigma=sigma,
                              model_mpp=model_mpp)
        written = write_report(report, out)
    except NucflowError as exc:
        raise click.ClickException(str(exc)) from exc
    if not quiet:
        click.echo(report.table(), nl=False)
        click.echo("scope: image = one image; mean = mean of the image scores; pooled = counts summed over images")
    for path in written.values():
        click.echo(f"wrote {path}")
