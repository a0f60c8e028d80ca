"""A failed slide: one clear line for the user, the full traceback in ``<slide>/error.log``.

The line is the exception's type and message (Ray's ``RayTaskError`` unwrapped to the
exception the task raised, colour codes and line breaks removed); the traceback, which only
a developer needs, goes to :data:`ERROR_LOG` beside the slide's outputs.
"""

from __future__ import annotations

import datetime
import re
import traceback
from pathlib import Path

from nucflow.atomic import write_text
from nucflow.storage import unpublish

__all__ = ["ERROR_LOG", "clear_error_log", "error_line", "record_failure"]

#: File name of a failed slide's traceback, in its output folder.
ERROR_LOG = "error.log"

_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
_MAX_LINE = 600


def _cause(exc: BaseException) -> BaseException:
    """The exception a Ray task raised, not Ray's wrapper around it."""
    import ray

    while isinstance(exc, ray.exceptions.RayTaskError) and isinstance(exc.cause, BaseException):
        if exc.cause is exc:
            break
        exc = exc.cause
    return exc


def error_line(exc: BaseException) -> str:
    """``"Type: message"`` on one line, without colour codes or Ray's wrapper."""
    cause = _cause(exc)
    name = type(cause).__name__
    if name.startswith("RayTaskError(") and name.endswith(")"):
        name = name[len("RayTaskError(") : -1]
    message = " ".join(_ANSI.sub("", str(cause)).split())
    if len(message) > _MAX_LINE:
        message = message[: _MAX_LINE - 3] + "..."
    return f"{name}: {message}" if message else name


def _traceback(exc: BaseException) -> str:
    import ray

    if isinstance(exc, ray.exceptions.RayTaskError):  # the remote traceback, as Ray recorded it
        return "Traceback (in the Ray worker, internal frames left out by Ray):\n" + _ANSI.sub("", str(exc))
    return "".join(traceback.format_exception(exc))


def record_failure(out_dir: str | Path, slide: str, exc: BaseException, *, stage: str = "") -> tuple[str, str]:
    """Write ``exc``'s traceback to ``out_dir/error.log``; the one-line error and the log's path.

    The log's path is ``""`` when it cannot be written (the line alone is then the record).
    """
    line = f"{stage}: {error_line(exc)}" if stage else error_line(exc)
    path = Path(out_dir) / ERROR_LOG
    when = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    try:
        write_text(path, f"slide: {slide}\nwhen: {when}\nerror: {line}\n\n{_traceback(exc)}")
    except OSError:
        return line, ""
    return line, str(path)


def clear_error_log(out_dir: str | Path) -> None:
    """Forget an earlier failure's log (the slide is being redone or is finished)."""
    (Path(out_dir) / ERROR_LOG).unlink(missing_ok=True)
    unpublish(Path(out_dir) / ERROR_LOG)  # and its copy in the bucket, for outputs there
