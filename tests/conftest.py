import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import pytest  # noqa: E402


@pytest.fixture(scope="session", autouse=True)
def _fresh_cache(tmp_path_factory):
    """Render the synthetic benchmark into a cache of the test session's own, as on a fresh clone."""
    os.environ["KFACEMTL_CACHE"] = str(tmp_path_factory.mktemp("kfacemtl-cache"))
    yield


@pytest.fixture(autouse=True)
def _seeded():
    """Every test starts from the same random state (Python, NumPy, Keras initialisers), so a test that trains a few
    steps gives the same verdict on every run and in any order."""
    import keras
    keras.utils.set_random_seed(0)
    yield
