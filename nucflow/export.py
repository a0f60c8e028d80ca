"""Exports of a run's nucleus tables for other tools: SpatialData (scverse, LazySlide, sopa).

Needs the optional extra: ``pip install "nucflow[spatialdata]"``.
"""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path
from typing import Any

from nucflow.errors import InputError

__all__ = ["SPATIALDATA_NAME", "export_spatialdata", "spatialdata_slides"]

#: The SpatialData store written in each slide's folder.
SPATIALDATA_NAME = "nuclei.spatialdata.zarr"
#: The element names inside it: the outlines (shapes) and their measurements (table).
SHAPES, TABLE = "nuclei", "table"
#: GeoParquet columns that are not measurements (the outlines and their identity).
_NOT_MEASURES = ("id", "geometry", "geometry_um")


def spatialdata_slides(out: str | Path) -> list[Path]:
    """The slide folders of output folder ``out`` that hold a nucleus table, sorted by name."""
    out = Path(out)
    if not out.is_dir():
        raise InputError(f"output folder {out} does not exist; give the -o folder of a nucflow segment run")
    slides = sorted(p.parent for p in out.glob("*/nuclei.parquet"))
    if not slides:
        raise InputError(f"{out} holds no <slide>/nuclei.parquet: run nucflow segment -o {out} first")
    return slides


def export_spatialdata(slide_dir: str | Path) -> Path:
    """Write ``slide_dir/nuclei.spatialdata.zarr`` from the slide's ``nuclei.parquet``.

    Shapes ``nuclei``: each nucleus outline as a polygon in level-0 pixels (the GeoParquet's
    ``geometry``; coordinate system ``global``), indexed by the table's ``id``. Table ``table``:
    an AnnData with one row per nucleus (``obs``: ``region`` = "nuclei" and the instance key
    ``id``) and every measurement column of the GeoParquet as a variable (booleans as 0/1).
    The store appears whole or not at all (written beside, then renamed over an older one).
    """
    try:
        import anndata
        import geopandas as gpd
        import numpy as np
        import pandas as pd
        from spatialdata import SpatialData
        from spatialdata.models import ShapesModel, TableModel
    except ImportError as exc:
        raise InputError(
            f"SpatialData export needs the spatialdata extra ({exc.name} is missing): "
            'pip install "nucflow[spatialdata]"'
        ) from None
    slide_dir = Path(slide_dir)
    table = gpd.read_parquet(slide_dir / "nuclei.parquet")
    ids = pd.Index(table["id"].to_numpy(np.int64), name="id")
    shapes = ShapesModel.parse(gpd.GeoDataFrame(geometry=table.geometry.to_numpy(), index=ids))
    measures = table.drop(columns=[c for c in _NOT_MEASURES if c in table.columns])
    measures = measures.select_dtypes(include=["number", "bool"]).astype(np.float32)
    obs = pd.DataFrame({"region": pd.Categorical([SHAPES] * len(table)), "id": ids.to_numpy()},
                       index=pd.Index(ids.to_numpy().astype(str)))
    annotated = anndata.AnnData(X=measures.to_numpy(), obs=obs,
                                var=pd.DataFrame(index=pd.Index(measures.columns.astype(str))))
    data = SpatialData(shapes={SHAPES: shapes},
                       tables={TABLE: TableModel.parse(annotated, region=SHAPES, region_key="region",
                                                       instance_key="id")})
    return _write_whole(data, slide_dir / SPATIALDATA_NAME)


def _write_whole(data: Any, path: Path) -> Path:
    """``data.write`` to a temporary store beside ``path``, then renamed onto it."""
    tmp = path.with_name(f".{path.stem}.{uuid.uuid4().hex[:8]}.partial.zarr")
    old = path.with_name(f".{path.stem}.{uuid.uuid4().hex[:8]}.old.zarr")
    try:
        data.write(tmp)
        if path.exists():
            path.rename(old)
        tmp.rename(path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)
    return path
