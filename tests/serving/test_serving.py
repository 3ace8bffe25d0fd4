"""Contract tests of the serving path: the real clients over the real gRPC stack and HTTP.

They run against the in-process :class:`LocalModelServer` (official TF Serving protos, backed by
the exported SavedModels), and against a real ``tensorflow_model_server`` when that binary is on
PATH.
"""

import shutil
import socket
import subprocess
import time

import numpy as np
import pytest
import tensorflow as tf

from helpers import tiny_model
from kfacemtl.serving.export import export_model, models_config
from kfacemtl.serving.local_server import LocalModelServer
from kfacemtl.serving.client import (Client, InvalidInputError, LocalPredictor, ModelNotFoundError,
                                     ServerUnavailableError, ServingError, format_results, group_outputs)

@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """Two versions of model 'faces' with different weights (stable = 1, canary = 2)."""
    base = tmp_path_factory.mktemp("saved_models")
    for seed in (1, 2):
        export_model(tiny_model(seed=seed), base, "faces")
    return base


@pytest.fixture(scope="module")
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


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module", params=["local-stub", "tensorflow_model_server"])
def server(request, base, tmp_path_factory):
    """``(grpc target, rest target)`` of a running server."""
    if request.param == "local-stub":
        with LocalModelServer(base) as srv:
            yield srv.grpc_target, srv.rest_target
        return
    binary = shutil.which("tensorflow_model_server")
    if binary is None:
        pytest.skip("tensorflow_model_server is not on PATH (it cannot be installed on this machine); "
                    "the same contract ran against the in-process stub")
    config = tmp_path_factory.mktemp("tfs") / "models.config"
    config.write_text(models_config("faces", [1, 2], {"stable": 1, "canary": 2}, str(base / "faces")))
    grpc_port, rest_port = _free_port(), _free_port()
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


@pytest.mark.parametrize("protocol", ["grpc", "rest"])
def test_client_equals_the_local_savedmodel(server, base, images, protocol):
    target = server[0] if protocol == "grpc" else server[1]
    for kw, version in (({"label": "stable"}, 1), ({"label": "canary"}, 2), ({}, 2), ({"version": 1}, 1)):
        local = LocalPredictor(base / "faces" / str(version)).predict(images)
        remote = Client(target, "faces", protocol=protocol, batch_size=2, **kw).predict(images)
        assert len(remote) == len(images)
        for r, lo in zip(remote, local):
            assert r["gender"]["class"] == lo["gender"]["class"] and r["action_units"]["active"] == \
                lo["action_units"]["active"]
            np.testing.assert_allclose(r["expression"]["probs"], lo["expression"]["probs"], atol=1e-6)
            np.testing.assert_allclose([r["age"]] + r["valence_arousal"], [lo["age"]] + lo["valence_arousal"],
                                       atol=1e-4)
    stable = LocalPredictor(base / "faces" / "1").predict(images[:1])[0]["age"]
    canary = LocalPredictor(base / "faces" / "2").predict(images[:1])[0]["age"]
    assert abs(stable - canary) > 1e-3  # the two versions really differ, so labels were resolved


@pytest.mark.parametrize("protocol", ["grpc", "rest"])
def test_metadata_lists_both_signatures(server, protocol):
    meta = Client(server[0] if protocol == "grpc" else server[1], "faces", protocol=protocol).metadata()
    assert meta["serving_default"]["inputs"] == {"images": "DT_STRING"}
    assert meta["serving_float"]["inputs"] == {"images": "DT_FLOAT"}
    assert meta["serving_default"]["outputs"]["expression_class"] == "DT_STRING"
    assert meta["serving_default"]["outputs"]["age"] == "DT_FLOAT"


@pytest.mark.parametrize("protocol", ["grpc", "rest"])
def test_not_found_names_the_model_version_or_label(server, images, protocol):
    target = server[0] if protocol == "grpc" else server[1]
    for kw, what in (({"model_name": "nope"}, "model 'nope'"), ({"version": 9}, "version 9"),
                     ({"label": "beta"}, "label 'beta'")):
        client = Client(target, **{"model_name": "faces", "protocol": protocol, **kw})
        with pytest.raises(ModelNotFoundError, match=what):
            client.predict(images[:1])


@pytest.mark.parametrize("protocol", ["grpc", "rest"])
def test_bad_images_are_errors_naming_the_image_and_the_server_survives(server, images, tmp_path, protocol):
    target = server[0] if protocol == "grpc" else server[1]
    client = Client(target, "faces", protocol=protocol)
    bad = {"corrupt.jpg": b"\xff\xd8\xff\xe0" + b"\x00" * 40, "empty.png": b"", "notes.png": b"hello, world\n",
           "bomb.png": b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + (20000).to_bytes(4, "big") * 2 + b"\x08\x02\0\0\0"}
    reasons = {"corrupt.jpg": "Invalid JPEG data", "empty.png": "is empty (0 bytes)",
               "notes.png": "is not a JPEG or PNG", "bomb.png": "declares 20000 x 20000 pixels"}
    for name, data in bad.items():
        path = tmp_path / name
        path.write_bytes(data)
        with pytest.raises(InvalidInputError) as err:
            client.predict(images[:2] + [str(path)])  # the bad one in a batch of three
        assert err.value.image == str(path), str(err.value)
        assert reasons[name] in str(err.value) and str(path) in str(err.value)
    with pytest.raises(InvalidInputError, match="empty request"):
        client.predict([])
    with pytest.raises(ServingError, match="does not exist"):
        client.predict([str(tmp_path / "missing.jpg")])
    assert len(client.predict(images[:1])) == 1  # still serving


def test_unavailable_is_retried_with_backoff_then_a_clear_error():
    port = _free_port()  # nothing listens there
    for protocol in ("grpc", "rest"):
        client = Client(f"127.0.0.1:{port}", "faces", protocol=protocol, retries=2, backoff=0.2, timeout=2)
        waits = []
        client.sleep = waits.append  # record the waits: no clock in the verdict
        with pytest.raises(ServerUnavailableError, match="unavailable after 2 retries"):
            client.predict([b"\x89PNG"])
        assert waits == [0.2, 0.4]  # 0.2 s, then 0.4 s, between the three attempts


def test_a_server_that_comes_up_during_the_retries_is_reached(base, images):
    port = _free_port()
    srv = LocalModelServer(base, grpc_port=port)
    client = Client(f"127.0.0.1:{port}", "faces", retries=6, backoff=0.2)
    import threading
    timer = threading.Timer(0.5, srv.start)
    timer.start()
    try:
        assert len(client.predict(images[:1])) == 1
    finally:
        timer.join()
        srv.stop()


def test_group_outputs_and_table():
    out = {"age": np.array([30.5, 41.0], "float32"), "gender_probs": np.array([[0.2, 0.8], [0.9, 0.1]]),
           "gender_label": np.array([1, 0]), "gender_class": np.array([b"female", b"male"]),
           "action_units_active": np.array([b"AU6,AU12", b""]), "valence_arousal": np.array([[0.5, -0.2], [0, 0]])}
    res = group_outputs(out, 2)
    assert res[0]["gender"] == {"probs": [0.2, 0.8], "label": 1, "class": "female"}
    assert res[1]["action_units"] == {"active": ""} and res[0]["valence_arousal"] == [0.5, -0.2]
    table = format_results(res, ["a.jpg", "b.jpg"])
    assert "female (0.80)" in table and "AU6,AU12" in table and "30.5" in table


def test_local_predictor_errors(tmp_path):
    with pytest.raises(ModelNotFoundError, match="not a SavedModel folder"):
        LocalPredictor(tmp_path)
    with pytest.raises(ServingError, match="version or a label, not both"):
        Client("x:1", "faces", version=1, label="stable")
