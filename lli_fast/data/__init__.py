"""Loaders for real data that ships inside installed packages (no downloads)."""

from lli_fast.data.lfw import FaceSplit, lfw_faces, to_model_range

__all__ = ["FaceSplit", "lfw_faces", "to_model_range"]
