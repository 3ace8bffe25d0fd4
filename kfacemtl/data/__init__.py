"""Data: sources of labelled face images and the tf.data pipeline that turns them into training batches.

Example:
    >>> from kfacemtl.data import make_dataset, make_source
    >>> from kfacemtl.tasks import resolve_tasks
    >>> ds = make_dataset([make_source("synthetic:lab?n=8")], resolve_tasks(["expression"]), batch_size=4,
    ...                   training=False)
    >>> tuple(next(iter(ds))[0].shape)
    (4, 64, 64, 3)
"""
from kfacemtl.data.source import IMAGE_EXTENSIONS, FileTableSource, Source  # noqa: I001 (the order registers formats)
from kfacemtl.data.registry import SOURCE_FORMATS, make_source, parse_spec, register_source
from kfacemtl.data.wrappers import RowSubset, WithoutLabels, sample_rows
from kfacemtl.data.splits import split_rows
from kfacemtl.data.formats import CsvSource, FolderSource, ImagesSource
from kfacemtl.data.synthetic import SyntheticSource
from kfacemtl.data.datasets import (AffectNetSource, CelebASource, CKPlusSource, FER2013Source, RAFDBSource,
                                    UTKFaceSource, celeba_attribute_task)
from kfacemtl.data.images import decode_image, decode_rgb, preprocess_image, resize_batch
from kfacemtl.data.augment import augment_batch, augment_options
from kfacemtl.data.cache import BadImageFiles, DecodedImages, cached_sources, find_bad_images
from kfacemtl.data.mixing import mixing_weights
from kfacemtl.data.dataset import make_dataset, prefetch_to_gpu, source_dataset, steps_per_epoch

__all__ = ["IMAGE_EXTENSIONS", "FileTableSource", "Source", "SOURCE_FORMATS", "make_source", "parse_spec",
           "register_source", "RowSubset", "WithoutLabels", "sample_rows", "split_rows", "CsvSource", "FolderSource",
           "ImagesSource", "SyntheticSource", "AffectNetSource", "CelebASource", "CKPlusSource", "FER2013Source",
           "RAFDBSource", "UTKFaceSource", "celeba_attribute_task", "decode_image", "decode_rgb", "preprocess_image",
           "resize_batch", "augment_batch", "augment_options", "BadImageFiles", "DecodedImages", "cached_sources",
           "find_bad_images", "mixing_weights", "make_dataset", "prefetch_to_gpu", "source_dataset", "steps_per_epoch"]
