"""Before Ray starts: everything a user can get wrong, checked at once and reported together.

:func:`preflight` checks the slide paths and globs, the output folder (created and
test-written), the stain profile (name or file, and its keys), the method's model, ``--mpp``
(finite and positive, and within :data:`MPP_TOLERANCE` of each slide's own metadata unless
forced) and that no two slides share an output folder. Every problem found is one line of
one :class:`~nucflow.errors.PreflightError`, raised before any work starts.
"""

from __future__ import annotations

import logging
import math
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from nucflow.errors import InputError, NucflowError, PreflightError
from nucflow.pipeline.config import SegmentConfig
from nucflow.pipeline.outputs import expand_slides, output_names, output_problems

if TYPE_CHECKING:
    from nucflow.inference.predictors import MethodSpec

__all__ = ["MPP_TOLERANCE", "Ready", "local_output", "preflight"]

log = logging.getLogger(__name__)

#: ``--mpp`` may differ from a slide's metadata by at most this factor, either way, unless forced.
MPP_TOLERANCE = 2.0


#: ``scheme://`` at the start of a string: a URI, not a local path.
_URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def local_output(out: str | os.PathLike[str], *, option: str = "-o") -> Path:
    """``out`` as a local path; an object-store URI (any ``scheme://``) is refused with an
    :class:`InputError` that says what to do, instead of becoming a folder ``./s3:/bucket``."""
    text = os.fspath(out)
    if _URI.match(text):
        raise InputError(
            f"{option} {text!r} is a URI: nucflow writes its outputs to a local or shared filesystem "
            "path only (object-store outputs are not supported yet); write to a folder every node "
            "sees (NFS, Lustre, a ReadWriteMany volume) or mount the bucket (s3fs, gcsfuse) and give that path"
        )
    return Path(text)


@dataclass(frozen=True)
class Ready:
    """What the checks resolved: the slides, their output folder names, the method, and the
    configuration with its stain profile named (the model card's unless one was given)."""

    paths: list[Path | str]  # a str is a remote slide's URI
    names: list[str]
    spec: MethodSpec
    config: SegmentConfig


def preflight(
    slides: Sequence[str | Path],
    out: Path,
    *,
    config: SegmentConfig,
    mpp: float | None,
    force_mpp: bool,
    load_spec: Callable[[SegmentConfig], MethodSpec],
) -> Ready:
    """Check a run before it starts; raise :class:`PreflightError` listing every problem.

    ``load_spec`` builds the method (loading and checking the model). Creates ``out``.
    Slides that exist but cannot be read are not problems here: they fail on their own
    later, and the other slides go on.
    """
    problems: list[str] = []
    paths: list[Path | str] = []
    try:
        paths = expand_slides(slides)
    except InputError as exc:
        problems.extend(str(exc).splitlines())
    problems.extend(output_problems(out))
    problems.extend(_stain_problems(config))
    spec = None
    try:
        spec = load_spec(config)
    except NucflowError as exc:
        problems.append(str(exc))
    problems.extend(_mpp_problems(paths, mpp, force=force_mpp))
    names: list[str] = []
    try:
        names = output_names(paths, out)
    except InputError as exc:
        problems.append(str(exc))
    if problems or spec is None:
        raise PreflightError(problems)
    from nucflow.pipeline.image import with_stain_profile

    return Ready(paths, names, spec, with_stain_profile(config, spec))


def _stain_problems(config: SegmentConfig) -> list[str]:
    from nucflow.postprocess import load_stain_profile

    if config.stain_profile is None:  # the model card's (or the baselines' default): known
        return []
    try:
        load_stain_profile(config.stain_profile)
    except NucflowError as exc:
        return [f"stain profile {config.stain_profile!r}: {exc}"]
    return []


def _mpp_problems(paths: list[Path | str], mpp: float | None, *, force: bool) -> list[str]:
    """``--mpp`` invalid, or too far from slides' metadata; logs which metadata it overrides."""
    if mpp is None:
        return []
    from nucflow.slide import check_mpp, metadata_mpp

    try:
        check_mpp(mpp)
    except InputError as exc:
        return [str(exc)]
    problems, overridden = [], []
    for path in paths:
        own = metadata_mpp(path)
        if own is None or not own > 0 or math.isclose(own, mpp, rel_tol=1e-6):
            continue
        factor = max(mpp / own, own / mpp)
        if factor > MPP_TOLERANCE and not force:
            problems.append(
                f"--mpp {mpp:g} is {factor:.3g}x {'coarser' if mpp > own else 'finer'} than the {own:.4g} µm/px "
                f"in the metadata of slide {path}; check it, or pass --force-mpp to use it anyway"
            )
        else:
            overridden.append(f"{Path(path).name} ({own:.4g} µm/px)")
    if overridden and not problems:
        log.warning(
            "--mpp %g overrides the resolution in the metadata of %d slide(s): %s",
            mpp, len(overridden), ", ".join(overridden),
        )
    return problems
