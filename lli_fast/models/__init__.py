"""Forward models the project ships loaders for."""

from lli_fast.models.face_dcgan import DCGANGenerator, face_dcgan

__all__ = ["DCGANGenerator", "face_dcgan"]
