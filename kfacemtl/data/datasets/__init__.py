"""Adapters for public face datasets, one module each; importing this package registers them all.

Example:
    >>> from kfacemtl.data.registry import SOURCE_FORMATS
    >>> sorted(f for f in SOURCE_FORMATS if f in ("utkface", "fer2013", "ckplus", "rafdb", "affectnet", "celeba"))
    ['affectnet', 'celeba', 'ckplus', 'fer2013', 'rafdb', 'utkface']
"""
from kfacemtl.data.datasets.affectnet import AffectNetSource
from kfacemtl.data.datasets.celeba import CelebASource, celeba_attribute_task
from kfacemtl.data.datasets.ckplus import CKPlusSource
from kfacemtl.data.datasets.fer2013 import FER2013Source
from kfacemtl.data.datasets.rafdb import RAFDBSource
from kfacemtl.data.datasets.utkface import UTKFaceSource

__all__ = ["AffectNetSource", "CelebASource", "celeba_attribute_task", "CKPlusSource", "FER2013Source", "RAFDBSource",
           "UTKFaceSource"]
