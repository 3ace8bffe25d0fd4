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


TINY = dict(widths=(8, 16), depths=1, embedding_dim=16, head_units=8)  # a backbone that builds and runs in ms


def tiny_model(tasks=None, seed=0):
    """A small untrained kfacemtl model over ``tasks`` (default every built-in face task)."""
    import keras

    from kfacemtl.models import build_model
    from kfacemtl.tasks import resolve_tasks
    keras.utils.set_random_seed(seed)
    return build_model(resolve_tasks(tasks), **TINY)
