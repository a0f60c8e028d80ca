"""From a probability map to a table of nuclei: labelling, features, tables and pictures.

In memory, :func:`label_nuclei` applies the paper's post-processing to a whole map; for a
slide, :func:`nuclei_table` runs the same steps on overlapping Dask blocks of a Zarr map and
returns one row per nucleus, which the writers save as GeoParquet or QuPath GeoJSON.
"""

from nucflow.postprocess._blocked import empty_table, nuclei_table
from nucflow.postprocess._config import (
    PixelSizes,
    PostprocessConfig,
    load_stain_profile,
    stain_profiles,
)
from nucflow.postprocess._features import (
    COLUMNS,
    MapGeometry,
    RgbReader,
    read_rgb_from_array,
    stain_od,
)
from nucflow.postprocess._label import label_nuclei
from nucflow.postprocess._writers import (
    CLASS_COLOURS,
    render_overlay,
    write_geojson_qupath,
    write_geoparquet,
)

__all__ = [
    "CLASS_COLOURS",
    "COLUMNS",
    "MapGeometry",
    "PixelSizes",
    "PostprocessConfig",
    "RgbReader",
    "empty_table",
    "label_nuclei",
    "load_stain_profile",
    "nuclei_table",
    "read_rgb_from_array",
    "render_overlay",
    "stain_od",
    "stain_profiles",
    "write_geojson_qupath",
    "write_geoparquet",
]
