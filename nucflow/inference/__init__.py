"""Running a segmentator over images and slides: in memory, and on Ray into Zarr."""
