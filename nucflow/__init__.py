"""nucflow: unsupervised nuclei segmentation of IHC whole-slide images at cohort scale."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("nucflow")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"
