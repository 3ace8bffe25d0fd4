"""Shared fixtures of the serving tests (one of each per test process): two exported versions of a model, images,
and a running server: the in-process stand-in, and a real ``tensorflow_model_server`` when that binary is on PATH."""

import shutil
import subprocess
import time

import numpy as np
import pytest
import tensorflow as tf

from helpers import free_port, tiny_model
from kfacemtl.serving.client import Client, ServingError
from kfacemtl.serving.export import export_model, models_config
from kfacemtl.serving.local_server import LocalModelServer


@pytest.fixture(scope="session")
def base(tmp_path_factory):
    """Two versions of model 'faces' with different weights (stable = 1, canary = 2)."""
    base = tmp_path_factory.mktemp("saved_models")
    for seed in (1, 2):
        export_model(tiny_model(seed=seed), base, "faces")
    return base


@pytest.fixture(scope="session")
def images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    files = []
    for i in range(5):
        arr = rng.integers(0, 256, (48 + 8 * i, 64, 3), dtype=np.uint8)
        data = tf.io.encode_png(arr) if i % 2 else tf.io.encode_jpeg(arr)
        path = folder / f"face{i}.{'png' if i % 2 else 'jpg'}"
        path.write_bytes(data.numpy())
        files.append(str(path))
    return files


# the contract and conformance tests run against each server here: the stand-in always, the real TF Serving binary
# where it is on PATH (tests/serving/test_conformance.py::test_a_real_server_is_there says when it is not)
TF_SERVING = shutil.which("tensorflow_model_server")


@pytest.fixture(scope="session", params=["local-stub"] + (["tensorflow_model_server"] if TF_SERVING else []))
def server(request, base, tmp_path_factory):
    """``(grpc target, rest target)`` of a running server."""
    if request.param == "local-stub":
        with LocalModelServer(base) as srv:
            yield srv.grpc_target, srv.rest_target
        return
    binary = TF_SERVING
    config = tmp_path_factory.mktemp("tfs") / "models.config"
    config.write_text(models_config("faces", [1, 2], {"stable": 1, "canary": 2}, str(base / "faces")))
    grpc_port, rest_port = free_port(), free_port()
    proc = subprocess.Popen([binary, f"--port={grpc_port}", f"--rest_api_port={rest_port}",
                             f"--model_config_file={config}", "--allow_version_labels_for_unavailable_models",
                             "--enable_model_warmup"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        client = Client(f"127.0.0.1:{grpc_port}", "faces", version=2, retries=0, timeout=2)
        for _ in range(60):
            try:
                client.metadata()
                break
            except ServingError:
                time.sleep(1)
        yield f"127.0.0.1:{grpc_port}", f"127.0.0.1:{rest_port}"
    finally:
        proc.terminate()
        proc.wait(10)


