import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import numpy as np  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture(scope="session", autouse=True)
def _fresh_cache(tmp_path_factory):
    """Render the synthetic benchmark into a cache of the test session's own, as on a fresh clone."""
    os.environ["KFACEMTL_CACHE"] = str(tmp_path_factory.mktemp("kfacemtl-cache"))
    yield


def write_png(path, array):
    """Write a uint8 (H, W, C) array as PNG with TF's own encoder."""
    import tensorflow as tf
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(tf.io.encode_png(np.asarray(array, dtype="uint8")).numpy())
    return path
