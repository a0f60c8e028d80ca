"""Object storage through fsspec: slides from ``s3://``, ``gs://``, ``http(s)://``, and
``segment``'s outputs to ``s3://``, ``gs://``, ``az://`` (see "outputs in a bucket" below).

OpenSlide reads only local files, so a remote slide is copied once per node into a local
cache (``NUCFLOW_CACHE``, default ``~/.cache/nucflow/slides``) and read from there by every
process of that node; the copy is named by the URI, the object's size and its ETag (or
modification time), so a changed object is fetched again, and it appears whole or not at all
(downloaded to a temporary name, its size checked, renamed). Why a copy rather than reading
byte ranges lazily through fsspec: see ``benchmarks/remote_slide.py`` and the README.

Each protocol needs its fsspec implementation: ``s3fs`` (installed with nucflow's ``s3``
extra; credentials from the usual AWS variables, profile or instance role; a custom endpoint
from ``AWS_ENDPOINT_URL``), ``gcsfs`` for ``gs://``, ``aiohttp`` for ``http(s)://``.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
import uuid
from pathlib import Path
from typing import Any

from nucflow.errors import SlideError

__all__ = [
    "cache_dir", "expand_uri", "is_uri", "local_copy", "publish", "published_uri", "remote_identity", "remote_info",
    "remove_remote_partials", "stage_outputs", "staging_dir", "unpublish",
]

_URI = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")
#: Bytes hashed at each end of a slide for its identity (as for local slides).
_SAMPLE = 1 << 20


def is_uri(text: str | os.PathLike[str]) -> bool:
    """Whether ``text`` names an object by URL (``s3://``, ``gs://``, ``https://`` ...), not a local path."""
    value = str(text)
    return bool(_URI.match(value)) and not value.startswith("file://")


def cache_dir() -> Path:
    """Where remote slides are copied on this node (``NUCFLOW_CACHE`` or ``~/.cache/nucflow/slides``)."""
    return Path(os.environ.get("NUCFLOW_CACHE") or Path.home() / ".cache" / "nucflow" / "slides")


def _filesystem(uri: str) -> tuple[Any, str]:
    import fsspec

    try:
        return fsspec.core.url_to_fs(uri)
    except ImportError as exc:
        scheme = uri.split("://", 1)[0]
        package = {"s3": "s3fs", "gs": "gcsfs", "gcs": "gcsfs", "http": "aiohttp", "https": "aiohttp"}.get(scheme, "?")
        raise SlideError(
            f"cannot read slide {uri}: {scheme}:// needs the {package} package (pip install {package})"
        ) from exc


def _explain(uri: str, exc: BaseException) -> SlideError:
    """One line naming ``uri`` and what went wrong: missing object, credentials, or the store unreachable."""
    name = type(exc).__name__
    text = str(exc) or name
    if isinstance(exc, FileNotFoundError):
        return SlideError(f"slide {uri} does not exist (no such bucket, key or URL); check the URI")
    if "Credentials" in name or "credential" in text.lower() or isinstance(exc, PermissionError):
        return SlideError(
            f"cannot read slide {uri}: access denied or no credentials ({text}); set AWS_ACCESS_KEY_ID and "
            "AWS_SECRET_ACCESS_KEY (or AWS_PROFILE, an instance role; GOOGLE_APPLICATION_CREDENTIALS for gs://)"
        )
    if "Connect" in name or "Endpoint" in name or "connect" in text.lower() or isinstance(exc, TimeoutError):
        return SlideError(f"cannot reach the object store of slide {uri} ({name}: {text}); check the endpoint "
                          "(AWS_ENDPOINT_URL) and the network")
    return SlideError(f"cannot read slide {uri}: {name}: {text}")


def remote_info(uri: str) -> dict[str, Any]:
    """The object's size and version tag (ETag, else modification time) without reading it."""
    fs, inner = _filesystem(uri)
    try:
        info = fs.info(inner)
    except Exception as exc:  # noqa: BLE001 - every store failure becomes one line naming the slide
        raise _explain(uri, exc) from exc
    if info.get("type") == "directory":
        raise SlideError(f"slide {uri} is a folder (a key prefix), not a slide file")
    size = int(info.get("size") or 0)
    if size == 0:
        raise SlideError(f"slide {uri} is empty (0 bytes); the upload may have failed")
    version = info.get("ETag") or info.get("etag") or info.get("LastModified") or info.get("mtime") or ""
    return {"size": size, "version": str(version).strip('"')}


def expand_uri(pattern: str) -> list[str]:
    """The slide URIs ``pattern`` names: its glob's matches (sorted), or itself once checked to exist."""
    if not any(char in pattern.split("://", 1)[1] for char in "*?["):
        remote_info(pattern)
        return [pattern]
    fs, inner = _filesystem(pattern)
    try:
        matches = sorted(fs.glob(inner))
    except Exception as exc:  # noqa: BLE001
        raise _explain(pattern, exc) from exc
    protocol = pattern.split("://", 1)[0]
    return [f"{protocol}://{match}" for match in matches]


def remote_identity(uri: str) -> dict[str, Any]:
    """A remote slide's identity, as :func:`nucflow.pipeline.outputs.slide_identity` gives a local one:
    its URI, size, version tag, and the SHA-256 of its size with its first and last MiB."""
    info = remote_info(uri)
    fs, inner = _filesystem(uri)
    size = info["size"]
    digest = hashlib.sha256(str(size).encode())
    try:
        digest.update(fs.cat_file(inner, start=0, end=min(size, _SAMPLE)))
        if size > _SAMPLE:
            digest.update(fs.cat_file(inner, start=max(_SAMPLE, size - _SAMPLE), end=size))
    except Exception as exc:  # noqa: BLE001
        raise _explain(uri, exc) from exc
    return {"path": uri, "size": size, "version": info["version"], "sample_sha256": digest.hexdigest()}


def local_copy(uri: str) -> Path:
    """A local, complete copy of the remote slide ``uri`` in this node's cache (fetched if needed).

    One process per node downloads (a file lock); the others wait and reuse its copy.
    """
    info = remote_info(uri)
    # no ETag or date (a plain HTTP server): the content sample tells a changed object apart
    version = info["version"] or remote_identity(uri)["sample_sha256"]
    key = hashlib.sha256(f"{uri}\0{info['size']}\0{version}".encode()).hexdigest()[:16]
    folder = cache_dir() / key
    target = folder / (uri.rstrip("/").rsplit("/", 1)[-1] or "slide")
    if target.is_file() and target.stat().st_size == info["size"]:
        return target
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if target.is_file() and target.stat().st_size == info["size"]:
            return target
        partial = folder / f".{target.name}.{uuid.uuid4().hex[:8]}.partial"
        fs, inner = _filesystem(uri)
        try:
            fs.get_file(inner, str(partial))
            got = partial.stat().st_size
            if got != info["size"]:
                raise SlideError(
                    f"slide {uri} came down truncated ({got} of {info['size']} bytes); the transfer was cut"
                )
            os.replace(partial, target)
        except SlideError:
            raise
        except Exception as exc:  # noqa: BLE001
            raise _explain(uri, exc) from exc
        finally:
            partial.unlink(missing_ok=True)
    return target


# --------------------------------------------------------------------------- outputs in a bucket
#
# ``-o s3://bucket/out``: the probability maps are Zarr groups in the bucket itself (every node's
# model actors write their chunks there through fsspec). Every other output (tables, summaries,
# pictures, logs) is written as for a local run into a staging folder on the node that makes it,
# whose name encodes the URI (``.../nucflow-out-<base64 of the URI>/<slide>/...``), and then
# published: uploaded to a temporary key beside its target and moved onto it, so no half-written
# object is ever visible. Any process on any node can tell a staged path's URI from the path alone.

_STAGE_MARK = "nucflow-out-"
#: URI schemes ``segment`` writes outputs to (object stores fsspec writes; HTTP is read-only).
OUTPUT_SCHEMES = ("s3", "gs", "gcs", "az", "abfs")


def output_uri(out: str | os.PathLike[str]) -> str | None:
    """``out`` as a bucket URI ``segment`` writes to; None for a local path.

    Raises :class:`InputError` for a URI of another scheme (``https://``, ``ftp://`` ...).
    """
    from nucflow.errors import InputError

    text = os.fspath(out)
    if not is_uri(text):
        return None
    scheme = text.split("://", 1)[0].lower()
    if scheme not in OUTPUT_SCHEMES:
        raise InputError(
            f"-o {text!r}: segment writes its outputs to a local or shared folder or to a bucket "
            f"({', '.join(s + '://' for s in OUTPUT_SCHEMES)}); {scheme}:// cannot be written"
        )
    return text.rstrip("/")


def _b64(text: str) -> str:
    import base64

    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def _unb64(text: str) -> str:
    import base64

    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)).decode()


def staging_dir(uri: str) -> Path:
    """This node's staging folder for outputs going to ``uri`` (under :func:`cache_dir`'s parent)."""
    return cache_dir().parent / "outputs" / f"{_STAGE_MARK}{_b64(uri.rstrip('/'))}"


def published_uri(path: str | os.PathLike[str]) -> str | None:
    """The object-store URI a staged local path stands for; None for an ordinary local path."""
    parts = Path(path).parts
    for index, part in enumerate(parts):
        if part.startswith(_STAGE_MARK):
            try:
                base = _unb64(part[len(_STAGE_MARK):])
            except ValueError:
                return None
            return "/".join([base, *parts[index + 1 :]])
    return None


def publish(path: str | os.PathLike[str]) -> None:
    """Upload a staged file to its URI: to a temporary key beside it, then moved onto it."""
    uri = published_uri(path)
    if uri is None:
        return
    fs, inner = _filesystem(uri)
    parent, name = inner.rsplit("/", 1)
    partial = f"{parent}/.{name}.{uuid.uuid4().hex[:8]}.partial"
    try:
        fs.put_file(str(path), partial)
        fs.mv(partial, inner)
    except Exception as exc:
        with contextlib.suppress(Exception):
            fs.rm(partial)
        raise OSError(f"cannot write {uri}: {type(exc).__name__}: {exc}") from exc


def unpublish(path: str | os.PathLike[str], *, recursive: bool = False) -> None:
    """Remove the object (or, ``recursive``, every object under the prefix) a staged path stands for."""
    uri = published_uri(path)
    if uri is None:
        return
    fs, inner = _filesystem(uri)
    with contextlib.suppress(FileNotFoundError):
        fs.rm(inner, recursive=recursive)


def remove_remote_partials(path: str | os.PathLike[str]) -> None:
    """Remove temporary keys a killed publisher left directly under a staged folder's URI."""
    uri = published_uri(path)
    if uri is None:
        return
    fs, inner = _filesystem(uri)
    with contextlib.suppress(FileNotFoundError):
        for key in fs.ls(inner, detail=False):
            if re.match(r"^\..+\.[0-9a-f]{8}\.partial$", key.rsplit("/", 1)[-1]):
                fs.rm(key)


def stage_outputs(uri: str) -> Path:
    """The staging folder for ``-o uri``, holding the bucket's ``*/summary.json`` (what a rerun
    needs to skip finished slides and to know which slide each folder holds) and a folder for
    every slide whose map the bucket holds.

    Raises :class:`OSError` naming the URI when the bucket cannot be reached or written.
    """
    fs, inner = _filesystem(uri)
    inner = inner.rstrip("/")
    local = staging_dir(uri)
    probe = f"{inner}/.nucflow-write-test-{uuid.uuid4().hex[:8]}"
    try:
        fs.pipe_file(probe, b"")
        fs.rm(probe)
        found = fs.glob(f"{inner}/*/summary.json")
        maps = fs.glob(f"{inner}/*/probability.zarr/zarr.json")
    except Exception as exc:  # noqa: BLE001 - one line naming the output location
        raise OSError(str(_explain(uri, exc)).replace("slide ", "output location ", 1)) from exc
    if local.exists():
        import shutil

        shutil.rmtree(local)  # what the bucket holds is the truth, not an older staging
    local.mkdir(parents=True)
    for key in maps:  # a slide begun there: its folder exists here too, so its map is checked
        (local / key[len(inner) + 1 :].split("/", 1)[0]).mkdir(exist_ok=True)
    for key in found:
        relative = key[len(inner) + 1 :]
        (local / relative).parent.mkdir(parents=True, exist_ok=True)
        fs.get_file(key, str(local / relative))
    return local
