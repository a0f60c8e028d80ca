"""Reading slides: OpenSlide and plain images, tissue detection, tile grids, demo slides."""

from nucflow.slide.reader import Slide, open_slide, safe_slide_name
from nucflow.slide.tiles import Tile, TileGrid, tile_grid
from nucflow.slide.tissue import tissue_mask

__all__ = ["Slide", "Tile", "TileGrid", "open_slide", "safe_slide_name", "tile_grid", "tissue_mask"]
