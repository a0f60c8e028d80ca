"""Running a segmentator over images and slides: in memory, and on Ray into Zarr."""

from nucflow.inference.predictors import METHODS, MethodSpec, Predictor, UNetPredictor, parse_method
from nucflow.inference.tiled import auto_tile_size, crop_padded, predict_image, predict_whole

__all__ = [
    "METHODS",
    "MethodSpec",
    "Predictor",
    "UNetPredictor",
    "auto_tile_size",
    "crop_padded",
    "parse_method",
    "predict_image",
    "predict_whole",
]
