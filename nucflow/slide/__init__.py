"""Reading slides: OpenSlide and plain images, tissue detection, tile grids, demo slides."""
