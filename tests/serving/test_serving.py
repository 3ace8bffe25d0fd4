"""Contract tests of the serving path: the real clients over the real gRPC stack and HTTP.

They run against the in-process :class:`LocalModelServer` (official TF Serving protos, backed by
the exported SavedModels), and against a real ``tensorflow_model_server`` when that binary is on
PATH (the fixtures are in conftest.py).
"""

import numpy as np
import pytest

from helpers import free_port
from kfacemtl.serving.local_server import LocalModelServer
from kfacemtl.serving.client import (Client, InvalidInputError, LocalPredictor, ModelNotFoundError,
                                     ServerUnavailableError, ServingError, format_results, group_outputs)

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
    port = free_port()  # nothing listens there
    for protocol in ("grpc", "rest"):
        client = Client(f"127.0.0.1:{port}", "faces", protocol=protocol, retries=2, backoff=0.2, timeout=2)
        waits = []
        client.sleep = waits.append  # record the waits: no clock in the verdict
        with pytest.raises(ServerUnavailableError, match="unavailable after 2 retries"):
            client.predict([b"\x89PNG"])
        assert waits == [0.2, 0.4]  # 0.2 s, then 0.4 s, between the three attempts


def test_a_server_that_comes_up_during_the_retries_is_reached(base, images):
    port = free_port()
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


def test_a_bad_image_in_a_batch_merged_from_several_clients_fails_only_itself(base, images, tmp_path):
    """TF Serving's batching merges the requests of several clients into one call of the signature: each
    client's bad image is named to that client, and every good image of every client is answered."""
    import threading
    bad = {"corrupt.jpg": b"\xff\xd8\xff\xe0" + b"\x00" * 40, "empty.png": b"", "notes.png": b"hello, world\n",
           "bomb.png": b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + (20000).to_bytes(4, "big") * 2 + b"\x08\x02\0\0\0",
           "truncated.jpg": open(images[0], "rb").read()[:1000]}  # the frame header, then the data stops
    reasons = {"corrupt.jpg": "Invalid JPEG data", "empty.png": "is empty (0 bytes)",
               "notes.png": "is not a JPEG or PNG", "bomb.png": "declares 20000 x 20000 pixels",
               "truncated.jpg": "could not be decoded"}
    for name, data in bad.items():
        (tmp_path / name).write_bytes(data)
    want = LocalPredictor(base / "faces" / "2").predict(images)
    with LocalModelServer(base, batching=True) as srv:
        batcher = srv.repo.batcher("faces")
        batcher.timeout = 0.2  # long enough for the threads' requests to meet in one batch here
        results, failures = {}, {}

        def client(i, name, protocol):
            target = srv.grpc_target if protocol == "grpc" else srv.rest_target
            c = Client(target, "faces", protocol=protocol)
            batch = [images[i % len(images)], str(tmp_path / name), images[(i + 1) % len(images)]]
            results[i] = c.predict(batch, errors="return")
            try:
                c.predict(batch)
            except InvalidInputError as e:
                failures[i] = e

        threads = [threading.Thread(target=client, args=(i, name, ("grpc", "rest")[i % 2]))
                   for i, name in enumerate(bad)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert max(n for _, n in batcher.batches) > 1  # requests of several clients were answered in one call
    for i, name in enumerate(bad):
        good = [want[i % len(images)], want[(i + 1) % len(images)]]
        for got, ref in zip([results[i][0], results[i][2]], good):
            assert got["gender"]["class"] == ref["gender"]["class"]
            np.testing.assert_allclose(got["age"], ref["age"], atol=1e-4)
        assert reasons[name] in results[i][1]["error"], results[i][1]
        assert failures[i].image == str(tmp_path / name) and reasons[name] in str(failures[i])


@pytest.mark.parametrize("protocol", ["grpc", "rest"])
def test_the_client_maps_each_status_to_its_error(server, images, protocol):
    target = server[0] if protocol == "grpc" else server[1]
    with pytest.raises(ModelNotFoundError, match="no such label"):  # INVALID_ARGUMENT: not a bad image
        Client(target, "faces", label="beta", protocol=protocol).predict(images[:1])
    with pytest.raises(ServingError, match="no signature 'nope'") as err:  # FAILED_PRECONDITION / 400
        Client(target, "faces", signature="nope", protocol=protocol).predict(images[:1])
    assert not isinstance(err.value, InvalidInputError)
    status = Client(target, "faces", protocol=protocol).status()
    assert [(s["version"], s["state"], s["error_code"]) for s in status] == [(2, "AVAILABLE", "OK"),
                                                                             (1, "AVAILABLE", "OK")]
    assert [s["version"] for s in Client(target, "faces", label="stable", protocol=protocol).status()] == [1]


def test_rest_answers_are_read_in_both_shapes():
    from kfacemtl.serving.client import rest_outputs
    rows = {"predictions": [{"age": 30.0, "error": ""}, {"age": 0.0, "error": "is empty (0 bytes)"}]}
    columns = {"outputs": {"age": [30.0, 0.0], "error": ["", "is empty (0 bytes)"]}}
    assert rest_outputs(rows) == rest_outputs(columns)
    assert rest_outputs({"predictions": [1.5, 2.5]}) == rest_outputs({"outputs": [1.5, 2.5]}) == {"output": [1.5, 2.5]}
    with pytest.raises(ServingError, match="'outputs' or 'predictions'"):
        rest_outputs({"result": []})
