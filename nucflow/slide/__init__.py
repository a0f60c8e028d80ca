"""Reading slides: OpenSlide and plain images, tissue detection, tile grids, demo slides.

The names are imported on first use (:mod:`nucflow._lazy`): slide names need no reader.
"""

from typing import TYPE_CHECKING

from nucflow._lazy import lazy_exports

if TYPE_CHECKING:
    from nucflow.slide.names import safe_slide_name, slide_stem
    from nucflow.slide.reader import Slide, check_mpp, metadata_mpp, open_slide
    from nucflow.slide.tiles import Tile, TileGrid, tile_grid
    from nucflow.slide.tissue import tissue_mask

_EXPORTS = {
    **dict.fromkeys(("safe_slide_name", "slide_stem"), "nucflow.slide.names"),
    **dict.fromkeys(("Slide", "check_mpp", "metadata_mpp", "open_slide"), "nucflow.slide.reader"),
    **dict.fromkeys(("Tile", "TileGrid", "tile_grid"), "nucflow.slide.tiles"),
    "tissue_mask": "nucflow.slide.tissue",
}

__all__ = [
    "Slide", "Tile", "TileGrid", "check_mpp", "metadata_mpp", "open_slide", "safe_slide_name", "slide_stem",
    "tile_grid", "tissue_mask",
]

__getattr__ = lazy_exports(__name__, _EXPORTS)
