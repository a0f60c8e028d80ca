"""What an output folder holds: slide folder names, slide identities, and finished slides.

Light on purpose (no NumPy, no slide readers, torch, Ray or Dask): ``segment`` decides here
whether a rerun has anything left to do (:func:`finished_run`) before it loads any of those.

A slide is finished with a run's inputs when its ``summary.json`` records them: the
post-processing writes ``summary.json`` with the run's ``config_hash`` (computed by
:mod:`nucflow.pipeline.plan` from the loaded model, the slide's thumbnail and the settings),
and the driver then adds the ``request_key`` of the request that led there
(:func:`request_key`: the settings, the model's files and the other options, hashed as
given). A rerun with the same request key, on the same slide (:func:`same_slide`), has
nothing to do for that slide; any other rerun plans the slide and compares ``config_hash``.
"""

from __future__ import annotations

import glob
import hashlib
import json
import tempfile
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from nucflow import __version__
from nucflow.config import CONFIG_DIR, config_file, config_hash, to_dict
from nucflow.errors import InputError, NucflowError, SlideError
from nucflow.slide.names import safe_slide_name, slide_stem
from nucflow.storage import expand_uri, is_uri, published_uri, remote_identity

__all__ = [
    "FinishedSlide", "expand_slides", "finished_run", "map_location", "output_names", "output_problems", "read_summary",
    "record_request", "recorded_identity", "request_key", "same_slide", "slide_identity",
]


def map_location(out_dir: str | Path) -> str:
    """Where a slide folder's probability map lives: beside its other outputs, or, for outputs
    staged for a bucket (:func:`nucflow.storage.stage_outputs`), in the bucket itself, which
    every node's model actors write to."""
    local = Path(out_dir) / "probability.zarr"
    return published_uri(local) or str(local)


def expand_slides(patterns: Sequence[str | Path]) -> list[Path | str]:
    """Expand paths and globs in order, without duplicates (resolved paths; URIs as given).

    Every pattern matching nothing is an error, one line each. A URI (``s3://``, ``gs://``,
    ``https://``) names a remote slide (see :mod:`nucflow.storage`); its glob is expanded by
    its store, and an unreachable store or missing credentials is an error here.
    """
    found: list[Path | str] = []
    missing: list[str] = []
    for pattern in patterns:
        text = str(pattern)
        if is_uri(text):
            try:
                uris = expand_uri(text)
            except SlideError as exc:
                missing.append(str(exc))
                continue
            if not uris:
                missing.append(f"no slide matches {text!r}; check the bucket, key or glob")
            found.extend(uris)
            continue
        matches = sorted(glob.glob(text, recursive=True)) if glob.has_magic(text) else [text]
        matches = [m for m in matches if Path(m).exists()]
        if not matches:
            missing.append(f"no slide matches {text!r}; check the path or glob (quote globs for the shell)")
        found.extend(Path(m).resolve() for m in matches)
    if missing:
        raise InputError("\n".join(missing))
    unique = list(dict.fromkeys(found))
    if not unique:
        raise InputError("no slides given; pass one or more slide paths or globs")
    return unique


def output_names(paths: Sequence[Path | str], out: Path | None = None) -> list[str]:
    """Output folder names, unique by construction for distinct (resolved) slide paths.

    A slide keeps its plain name (its file stem) when that is already safe (nothing to
    replace) and no other slide of the run shares it, ignoring case. Otherwise it gets its
    safe name plus 8 hex digits of the hash of its full resolved path (``my_slide-1a2b3c4d``).
    Either way, a folder of ``out`` that already holds this same file's results from an earlier
    run (under the plain or the hashed name) keeps serving it, so a slide's folder does not
    change with the other slides of a run. Any collision left (say, a slide literally named
    like another's hashed name) is an :class:`InputError`.
    """
    safe = [safe_slide_name(p) for p in paths]
    shared = Counter(name.lower() for name in safe)
    names = []
    for path, name in zip(paths, safe, strict=True):
        plain = name == slide_stem(path) and shared[name.lower()] == 1
        hashed = f"{name}-{_path_hash(path)}"
        earlier = [n for n in (name, hashed) if out is not None and _recorded_path(out / n) == str(path)]
        names.append(earlier[0] if earlier else name if plain else hashed)
    owner: dict[str, Path | str] = {}
    for path, name in zip(paths, names, strict=True):
        other = owner.setdefault(name.lower(), path)
        if other != path:
            raise InputError(
                f"slides {other} and {path} would share the output folder {name!r}; "
                "rename one, or segment them with different -o"
            )
    return names


def _path_hash(path: Path | str) -> str:
    return hashlib.sha256(str(path).encode()).hexdigest()[:8]


#: Bytes hashed at each end of a slide file for its identity.
_IDENTITY_SAMPLE = 1 << 20


def slide_identity(path: str | Path) -> dict[str, Any]:
    """What says that outputs belong to this slide: path, size, modification time, and the
    SHA-256 of the size with the first and last MiB (the content sample).

    Two files are the same slide when size and sample agree (a moved or copied slide still
    resumes); the path and time are recorded for people. A remote slide records its URI, size,
    version tag (ETag) and the same sample.
    """
    if is_uri(path):
        return remote_identity(str(path))
    path = Path(path)
    stat = path.stat()
    digest = hashlib.sha256(str(stat.st_size).encode())
    if path.is_dir():  # a slide stored as a folder (DICOM): its listing
        for entry in sorted(path.iterdir()):
            digest.update(f"{entry.name}:{entry.stat().st_size}".encode())
    else:
        with open(path, "rb") as handle:
            digest.update(handle.read(_IDENTITY_SAMPLE))
            if stat.st_size > 2 * _IDENTITY_SAMPLE:
                handle.seek(-_IDENTITY_SAMPLE, 2)
                digest.update(handle.read(_IDENTITY_SAMPLE))
    return {"path": str(path), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sample_sha256": digest.hexdigest()}


def recorded_identity(out_dir: Path) -> dict[str, Any] | None:
    """The slide identity recorded with the outputs in ``out_dir`` (summary, else map); None if none.

    Outputs of earlier versions record only the slide's path (``{"path": ...}``).
    """
    summary = read_summary(out_dir)
    if summary is not None:
        return _summary_identity(summary)
    from nucflow.inference.store import open_map

    existing = open_map(map_location(out_dir))
    if existing is None:
        return None
    try:
        meta = existing.metadata
    except (OSError, ValueError, TypeError):  # an unreadable map records nothing
        return None
    return dict(meta.slide_identity or {"path": meta.slide_path or None})


def _summary_identity(summary: dict[str, Any]) -> dict[str, Any]:
    """The slide identity a ``summary.json`` records (earlier versions: only the slide's path)."""
    return dict(summary.get("slide_identity") or {"path": summary.get("path")})


def _recorded_path(out_dir: Path) -> str | None:
    recorded = recorded_identity(out_dir) if out_dir.is_dir() else None
    return recorded.get("path") if recorded else None


def same_slide(recorded: dict[str, Any], identity: dict[str, Any]) -> bool:
    if "sample_sha256" in recorded:
        return recorded["sample_sha256"] == identity["sample_sha256"] and recorded.get("size") == identity["size"]
    return recorded.get("path") == identity["path"]


def request_key(
    config: Any, *, mpp: float | None, force_mpp: bool, roi: str | Path | None = None, roi_exclude: Sequence[str] = ()
) -> str | None:
    """A hash of what a ``segment`` request asks for, as given, read without loading anything.

    ``config`` (a :class:`~nucflow.pipeline.config.SegmentConfig` with its method and model
    set, before the stain profile is resolved) with its model path replaced by the model
    files' content (the weights' id and the card's bytes: :mod:`nucflow.models._files`), the
    stain profile file's bytes (every shipped profile's when none is named: the card's is one
    of them), ``--mpp`` (and ``--force-mpp`` with it), the regions of interest by content (the
    ROI file's bytes, or every file of the ROI folder), and nucflow's version. Every input of
    the slide's ``config_hash`` is a function of these and the slide itself, so a slide finished with the
    same key and the same slide (:func:`same_slide`) is finished with the same configuration.
    None when a file cannot be read (the model, the stain profile, the regions): the full
    planning says why.
    """
    try:
        model = _model_fingerprint(config)
        stain = _stain_fingerprint(config.stain_profile)
        regions = [_roi_fingerprint(Path(roi)), sorted(roi_exclude)] if roi is not None else None
    except (OSError, NucflowError):
        return None
    settings = to_dict(replace(config, model=None))
    return config_hash("segment-request", settings, model, stain, mpp, bool(force_mpp) if mpp is not None else None,
                       regions, __version__)


def _stain_fingerprint(name_or_path: str | None) -> str:
    """The stain profile file's bytes, hashed; for None (the model card's profile, or the
    baselines' default: a shipped one), every shipped profile's."""
    digest = hashlib.sha256()
    if name_or_path is not None:
        digest.update(config_file(name_or_path, "stains", what="stain profile").read_bytes())
        return digest.hexdigest()
    for path in sorted((CONFIG_DIR / "stains").iterdir(), key=lambda p: p.name):
        if path.name.endswith(".yaml"):
            digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def _roi_fingerprint(roi: Path) -> list[str]:
    """The regions of interest by content: a file's bytes, or a folder's files (names and bytes),
    so an annotation edited in place makes the rerun plan (the plan's hash holds the regions)."""
    files = [roi] if roi.is_file() else sorted(p for p in roi.iterdir() if p.is_file())
    return [f"{p.name}:{hashlib.sha256(p.read_bytes()).hexdigest()}" for p in files]


def _model_fingerprint(config: Any) -> list[str] | None:
    if config.method != "unet":
        return None
    from nucflow.models._files import default_model_path, file_id, model_files

    path = config.model or default_model_path()
    if path is None:
        raise OSError("no model")
    weights, card = model_files(Path(path))
    return [file_id(weights), hashlib.sha256(card.read_bytes()).hexdigest()]


@dataclass(frozen=True)
class FinishedSlide:
    """A slide of a rerun that is finished with the rerun's request: its output folder name
    (``key``), its path or URI, and its ``summary.json``."""

    key: str
    path: str
    summary: dict[str, Any]


def finished_run(slides: Sequence[str | Path], out: Path, *, key: str) -> list[FinishedSlide] | None:
    """The slides of a rerun when every one is finished with request ``key``; else None.

    Reads each slide folder's ``summary.json`` and the slide's identity (its size and a
    sample of its bytes, :func:`slide_identity`), nothing else: no model, thumbnail or map.
    None as soon as one slide is not finished with ``key`` (or has no folder yet), and when
    anything is wrong with the request (a missing slide, an unwritable ``out``): the full
    planning and its pre-flight checks then report or redo it.
    """
    try:
        paths = expand_slides(slides)
        names = output_names(paths, out)
    except (InputError, OSError):
        return None
    if output_problems(out):
        return None
    found = []
    for path, name in zip(paths, names, strict=True):
        summary = read_summary(out / name)
        if summary is None or summary.get("request_key") != key:
            return None
        try:
            identity = slide_identity(path)
        except (OSError, NucflowError):
            return None
        if not same_slide(_summary_identity(summary), identity):
            return None
        found.append(FinishedSlide(name, str(path), summary))
    return found


def read_summary(out_dir: Path) -> dict[str, Any] | None:
    """A slide folder's ``summary.json``; None when it is missing or unreadable."""
    try:
        summary = json.loads((out_dir / "summary.json").read_text())
    except (OSError, ValueError):
        return None
    return summary if isinstance(summary, dict) else None


def record_request(out_dir: Path, key: str) -> None:
    """Add request ``key`` to a slide's ``summary.json`` (after the slide was finished, or found
    finished, by a request with that key), so that the same request finds it finished cheaply."""
    from nucflow.atomic import write_json

    summary = read_summary(out_dir)
    if summary is not None and summary.get("request_key") != key:
        write_json(out_dir / "summary.json", {**summary, "request_key": key})


def output_problems(out: Path) -> list[str]:
    """Why ``out`` cannot be the output folder (it is a file, or cannot be written); creates it."""
    if out.exists() and not out.is_dir():
        return [f"output folder {out} is a file; choose another -o"]
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out, prefix=".nucflow-write-test-"):
            pass
    except OSError as exc:
        return [f"output folder {out} cannot be written ({exc.strerror or exc}); choose another -o"]
    return []
