import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import pytest  # noqa: E402


@pytest.fixture(scope="session", autouse=True)
def _fresh_cache(tmp_path_factory):
    """Render the synthetic benchmark into a cache of the test session's own, as on a fresh clone. Under
    pytest-xdist the workers share it (the session's temporary folder, above each worker's): a split one worker
    rendered the other reads (cache files are written atomically, so two rendering at once is safe)."""
    base = tmp_path_factory.getbasetemp()
    cache = (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "kfacemtl-cache"
    cache.mkdir(exist_ok=True)
    os.environ["KFACEMTL_CACHE"] = str(cache)
    yield


@pytest.fixture(autouse=True)
def _seeded():
    """Every test starts from the same random state (Python, NumPy, Keras initialisers), so a test that trains a few
    steps gives the same verdict on every run and in any order."""
    import keras
    keras.utils.set_random_seed(0)
    yield


def _long(item) -> bool:
    return any(item.get_closest_marker(mark) for mark in ("slow", "e2e"))


def pytest_collection_modifyitems(config, items):
    """Under ``make test`` (pytest-xdist's work stealing) each worker starts on a contiguous share of the tests and
    steals from the end of another's when it runs out: the tests marked ``slow`` (or ``e2e``, all long) go first in
    every share, dealt in turn, so the long tests run side by side from the start and the short ones fill in at the
    end."""
    workers = getattr(config, "workerinput", {}).get("workercount")
    if not workers or workers < 2:
        return
    slow = [item for item in items if _long(item)]
    fast = [item for item in items if not _long(item)]
    ordered, remaining = [], len(items)
    for k in range(workers):  # the shares xdist's work stealing hands out first (check_schedule)
        size = remaining // (workers - k)
        remaining -= size
        share = slow[k::workers]
        take = max(0, size - len(share))
        ordered += share + fast[:take]
        fast = fast[take:]
    items[:] = ordered + fast
