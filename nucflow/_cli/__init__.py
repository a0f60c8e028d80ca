"""Click commands, one module each; see nucflow.cli."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click


class LocalFolder(click.Path):
    """An output folder (``-o``) on a local or shared filesystem: an object-store URI is a usage
    error that says so (see :func:`nucflow.pipeline.preflight.local_output`), never a local
    folder named ``s3:``."""

    def __init__(self) -> None:
        super().__init__(file_okay=False, path_type=Path)

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        from nucflow.errors import InputError
        from nucflow.pipeline.preflight import local_output

        try:
            local_output(value, option=param.opts[0] if param is not None and param.opts else "-o")
        except InputError as exc:
            self.fail(str(exc), param, ctx)
        return super().convert(value, param, ctx)


class OutputLocation(LocalFolder):
    """``segment``'s ``-o``: a local or shared folder, or an object-store URI (``s3://``,
    ``gs://``; see :mod:`nucflow.storage`), kept as the URI string."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        from nucflow.errors import InputError
        from nucflow.storage import output_uri

        try:
            uri = output_uri(value) if isinstance(value, str) else None
        except InputError as exc:
            self.fail(str(exc), param, ctx)
        return uri if uri is not None else super().convert(value, param, ctx)
