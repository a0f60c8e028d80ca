"""From a probability map to a table of nuclei: labelling, features, tables and pictures.

In memory, :func:`label_nuclei` applies the paper's post-processing to a whole map; for a
slide, :func:`nuclei_table` runs the same steps on overlapping Dask blocks of a Zarr map and
returns one row per nucleus, which the writers save as GeoParquet or QuPath GeoJSON;
:func:`iter_nuclei_parts` and :class:`NucleusTableWriter` do the same part by part, in
memory that does not grow with the slide.

The names are imported on first use (:mod:`nucflow._lazy`): labelling a map in memory
(``evaluate``, ``validate``) loads neither Dask, Zarr nor GeoPandas.
"""

from typing import TYPE_CHECKING

from nucflow._lazy import lazy_exports

if TYPE_CHECKING:
    from nucflow.postprocess._blocked import Block, empty_table, iter_nuclei_parts, nuclei_table
    from nucflow.postprocess._config import (
        PixelSizes,
        PostprocessConfig,
        dab_positive,
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
        NucleusTableWriter,
        OverlayNuclei,
        render_overlay,
        write_geojson_qupath,
        write_geoparquet,
    )

_EXPORTS = {
    **dict.fromkeys(("Block", "empty_table", "iter_nuclei_parts", "nuclei_table"),
                    "nucflow.postprocess._blocked"),
    **dict.fromkeys(("PixelSizes", "PostprocessConfig", "dab_positive", "load_stain_profile",
                     "stain_profiles"), "nucflow.postprocess._config"),
    **dict.fromkeys(("COLUMNS", "MapGeometry", "RgbReader", "read_rgb_from_array", "stain_od"),
                    "nucflow.postprocess._features"),
    "label_nuclei": "nucflow.postprocess._label",
    **dict.fromkeys(("CLASS_COLOURS", "NucleusTableWriter", "OverlayNuclei", "render_overlay",
                     "write_geojson_qupath", "write_geoparquet"), "nucflow.postprocess._writers"),
}

__all__ = [
    "Block",
    "CLASS_COLOURS",
    "COLUMNS",
    "MapGeometry",
    "NucleusTableWriter",
    "OverlayNuclei",
    "PixelSizes",
    "PostprocessConfig",
    "RgbReader",
    "dab_positive",
    "empty_table",
    "iter_nuclei_parts",
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

__getattr__ = lazy_exports(__name__, _EXPORTS)
