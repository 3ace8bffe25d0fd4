"""TF Serving conformance, as a table: each case is a request and what TF Serving answers to it (status, the key
phrase of its message, the shape of its answer), taken from TF Serving's own REST handler tests
(``http_rest_api_handler_test.cc``), ``api_rest.md`` and its gRPC services (``predict_util.cc``,
``get_model_status_impl.cc``, ``server_core.cc``). The same table runs against the in-process stand-in and,
where ``tensorflow_model_server`` is on PATH, against the real server (the ``server`` fixture in conftest.py):
model ``faces``, versions 1 and 2, labels ``stable`` = 1 and ``canary`` = 2.
"""
import base64
import json
import shutil
import urllib.error
import urllib.request

import grpc
import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import (get_model_metadata_pb2, get_model_status_pb2, model_service_pb2_grpc,
                                     predict_pb2, prediction_service_pb2_grpc)

from kfacemtl.serving.export import export_model
from kfacemtl.serving.local_server import LocalModelServer
from helpers import tiny_model

PNG = tf.io.encode_png(np.full((24, 20, 3), 120, np.uint8)).numpy()
B64 = {"b64": base64.b64encode(PNG).decode()}
MODEL = "/v1/models/faces"


def _predictions_of_two(body):
    rows = body["predictions"]
    return len(rows) == 2 and {"age", "gender_class", "error"} <= set(rows[0]) and rows[0]["error"] == ""


def _outputs_of_two(body):
    out = body["outputs"]
    return len(out["age"]) == 2 and out["gender_class"][0] in ("male", "female")


def _status(*versions):
    def check(body):
        got = {(s["version"], s["state"], s["status"]["error_code"]) for s in body["model_version_status"]}
        return got == {(str(v), "AVAILABLE", "OK") for v in versions}
    return check


def _metadata(version):
    def check(body):
        sigs = body["metadata"]["signature_def"]["signature_def"]
        return (body["model_spec"]["name"] == "faces" and body["model_spec"]["version"] == str(version)
                and sigs["serving_default"]["inputs"]["images"]["dtype"] == "DT_STRING"
                and sigs["serving_default"]["method_name"] == "tensorflow/serving/predict"
                and sigs["serving_float"]["inputs"]["images"]["dtype"] == "DT_FLOAT")
    return check


# (method, path, body, HTTP status, key phrase of the error, or a check of the answer)
REST = [
    # paths (UnsupportedApiCalls)
    ("GET", "/v1/foo", "", 400, "Malformed request"),
    ("POST", "/v1/foo", "", 400, "Malformed request"),
    ("GET", "/v1/models", "", 400, "Missing model name"),
    ("GET", "/v1/models/debug/model_name", "", 400, "Malformed request"),
    ("POST", "/v1/models", "", 400, "Malformed request"),
    ("GET", f"{MODEL}:predict", "", 400, "Malformed request"),
    ("GET", f"{MODEL}/version/1:predict", "", 400, "Malformed request"),
    ("POST", f"{MODEL}/version/1:predict", "", 400, "Malformed request"),
    ("POST", f"{MODEL}/versions/HELLO:predict", "", 400, "Malformed request"),
    ("POST", f"{MODEL}/versions/18446744073709551615:predict", "", 400, "Failed to convert version"),
    ("POST", f"{MODEL}/metadata", "", 400, "Malformed request"),
    ("POST", f"{MODEL}/label/stable:predict", "", 400, "Malformed request"),
    ("POST", f"{MODEL}/versions/1/labels/stable:predict", "", 400, "Malformed request"),
    ("POST", f"{MODEL}/versions/stable:predict", "", 400, "Malformed request"),
    # model, version, label (PredictModelNameVersionErrors, PredictRequestErrors)
    ("POST", "/v1/models/nope:predict", {"instances": [B64]}, 404, "Servable not found"),
    ("POST", "/v1/models/nope/versions/50:predict", {"instances": [B64]}, 404, "Servable not found"),
    ("POST", f"{MODEL}/versions/99:predict", {"instances": [B64]}, 404, "Servable not found"),
    ("POST", f"{MODEL}/labels/nope:predict", {"instances": [B64]}, 400, "Unrecognized servable version label"),
    # the request's JSON
    ("POST", f"{MODEL}:predict", "", 400, "JSON Parse error: The document is empty"),
    ("POST", f"{MODEL}:predict", "instances = [1, 2]", 400, "JSON Parse error"),
    ("POST", f"{MODEL}:predict", {"instances": [1, 2]}, 400, "not of expected type: string"),
    ("POST", f"{MODEL}:predict", {"signature_name": 100}, 400, "'signature_name' key must be a string value."),
    ("POST", f"{MODEL}:predict", {"signature_name": "nope", "instances": [B64]}, 400,
     'Serving signature name: "nope" not found in signature def'),
    ("POST", f"{MODEL}:predict", {"instances": [B64], "inputs": [B64]}, 400,
     "expecting only one of 'inputs' or 'instances' keys to exist"),
    ("POST", f"{MODEL}:predict", {"signature_name": "serving_default"}, 400, "Missing 'inputs' or 'instances' key"),
    ("POST", f"{MODEL}:predict", {"instances": []}, 400, "No values in 'instances' array"),
    ("POST", f"{MODEL}:predict", {"instances": B64}, 400, "'instances' to be an list/array"),
    ("POST", f"{MODEL}:predict", {"inputs": {"pictures": [B64]}}, 400, "Missing named input: images"),
    ("POST", f"{MODEL}:predict", {"instances": [{"b64": "not base64!"}]}, 400, "Unable to base64 decode"),
    ("POST", f"{MODEL}:predict", {"signature_name": "serving_float", "instances": [[[1.0, 2.0, 3.0]]]}, 400, ""),
    # answers (Predict): rows answer "instances" with "predictions", columns answer "inputs" with "outputs"
    ("POST", f"{MODEL}:predict", {"instances": [B64, B64]}, 200, _predictions_of_two),
    ("POST", f"{MODEL}:predict", {"instances": [{"images": B64}, {"images": B64}]}, 200, _predictions_of_two),
    ("POST", f"{MODEL}/versions/1:predict", {"signature_name": "serving_default", "inputs": [B64, B64]}, 200,
     _outputs_of_two),
    ("POST", f"{MODEL}/labels/stable:predict", {"inputs": {"images": [B64, B64]}}, 200, _outputs_of_two),
    # model status (GetStatus)
    ("GET", MODEL, "", 200, _status(1, 2)),
    ("GET", f"{MODEL}/versions/1", "", 200, _status(1)),
    ("GET", f"{MODEL}/labels/canary", "", 200, lambda body: "2" in {s["version"] for s in body[
        "model_version_status"]}),
    ("GET", "/v1/models/nope", "", 404, "Could not find any versions of model nope"),
    ("GET", f"{MODEL}/versions/9", "", 404, "Could not find version 9 of model faces"),
    # metadata (GetModelMetadata)
    ("GET", f"{MODEL}/metadata", "", 200, _metadata(2)),
    ("GET", f"{MODEL}/versions/1/metadata", "", 200, _metadata(1)),
    ("GET", f"{MODEL}/labels/stable/metadata", "", 200, _metadata(1)),
    ("GET", "/v1/models/nope/metadata", "", 404, "Servable not found"),
    ("GET", f"{MODEL}/labels/nope/metadata", "", 400, "Unrecognized servable version label"),
]


def rest(target, method, path, body):
    data = None if method == "GET" else (body if isinstance(body, str) else json.dumps(body)).encode()
    request = urllib.request.Request(f"http://{target}{path}", data=data, method=method,
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=20) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as e:
        raw = e.read()
        try:
            return e.code, json.loads(raw)
        except ValueError:
            return e.code, {"error": raw.decode("utf-8", "replace")}


@pytest.mark.parametrize("method, path, body, status, expect", REST,
                         ids=[f"{m} {p} {json.dumps(b)[:40]}" for m, p, b, *_ in REST])
def test_rest(server, method, path, body, status, expect):
    got, answer = rest(server[1], method, path, body)
    assert got == status, answer
    if callable(expect):
        assert expect(answer), answer
    else:
        assert expect in answer["error"], answer


def test_a_real_server_is_there():
    if not shutil.which("tensorflow_model_server"):
        pytest.skip("tensorflow_model_server is not on PATH (it cannot be installed on this machine): the tables "
                    "ran against the in-process stand-in only")


def test_a_path_outside_v1_is_not_found(server):
    assert rest(server[1], "GET", "/index", "")[0] == 404


def _spec(request, version=None, label=None, signature=""):
    request.model_spec.name = "faces"
    if version is not None:
        request.model_spec.version.value = version
    if label:
        request.model_spec.version_label = label
    if hasattr(request.model_spec, "signature_name"):
        request.model_spec.signature_name = signature
    return request


def _predict(version=None, label=None, signature="", inputs=None, output_filter=(), name="faces"):
    request = _spec(predict_pb2.PredictRequest(), version, label, signature)
    request.model_spec.name = name
    for k, v in (inputs if inputs is not None else {"images": [PNG]}).items():
        request.inputs[k].CopyFrom(tf.make_tensor_proto(v))
    request.output_filter.extend(output_filter)
    return "Predict", request


def _metadata_request(version=None, label=None, fields=("signature_def",), name="faces"):
    request = _spec(get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=list(fields)), version, label)
    request.model_spec.name = name
    return "GetModelMetadata", request


def _status_request(version=None, label=None, name="faces"):
    request = _spec(get_model_status_pb2.GetModelStatusRequest(), version, label)
    request.model_spec.name = name
    return "GetModelStatus", request


def _answered_by(version, signature="serving_default"):
    return lambda r: r.model_spec.version.value == version and r.model_spec.signature_name == signature


# (call, gRPC status, key phrase of the error, or a check of the answer)
GRPC = [
    (_predict(), "OK", _answered_by(2)),
    (_predict(label="stable"), "OK", _answered_by(1)),
    (_predict(version=1, signature="serving_default"), "OK", _answered_by(1)),
    (_predict(output_filter=["age"]), "OK", lambda r: set(r.outputs) == {"age"}),
    (_predict(name="nope"), "NOT_FOUND", "Servable not found for request: Latest(nope)"),
    (_predict(version=99), "NOT_FOUND", "Servable not found for request: Specific(faces, 99)"),
    (_predict(label="nope"), "INVALID_ARGUMENT", "Unrecognized servable version label: nope"),
    (_predict(signature="nope"), "FAILED_PRECONDITION", 'Serving signature key "nope" not found.'),
    (_predict(inputs={"images": [PNG], "extra": [PNG]}), "INVALID_ARGUMENT", "input size does not match signature"),
    (_predict(inputs={}), "INVALID_ARGUMENT", "input size does not match signature"),
    (_predict(output_filter=["nope"]), "INVALID_ARGUMENT", "output tensor alias not found in signature: nope"),
    (_predict(inputs={"images": np.zeros(1, np.float32)}), "INVALID_ARGUMENT", ""),
    (_metadata_request(), "OK", lambda r: r.model_spec.version.value == 2 and "signature_def" in r.metadata),
    (_metadata_request(label="stable"), "OK", lambda r: r.model_spec.version.value == 1),
    (_metadata_request(name="nope"), "NOT_FOUND", "Servable not found"),
    (_metadata_request(fields=("nope",)), "INVALID_ARGUMENT", ""),
    (_status_request(), "OK", lambda r: {(s.version, s.state) for s in r.model_version_status} == {(1, 30), (2, 30)}),
    (_status_request(version=2), "OK", lambda r: [s.version for s in r.model_version_status] == [2]),
    (_status_request(version=9), "NOT_FOUND", "Could not find version 9 of model faces"),
    (_status_request(name="nope"), "NOT_FOUND", "Could not find any versions of model nope"),
]


@pytest.mark.parametrize("call, code, expect", GRPC, ids=[f"{c[0]} {i}" for i, (c, *_) in enumerate(GRPC)])
def test_grpc(server, call, code, expect):
    method, request = call
    channel = grpc.insecure_channel(server[0])
    stub = (model_service_pb2_grpc.ModelServiceStub if method == "GetModelStatus"
            else prediction_service_pb2_grpc.PredictionServiceStub)(channel)
    try:
        response = getattr(stub, method)(request, timeout=20)
        assert code == "OK", f"answered, expected {code}"
        assert expect(response)
    except grpc.RpcError as e:
        assert e.code().name == code, e.details()
        assert isinstance(expect, str) and expect in e.details(), e.details()
    finally:
        channel.close()


# -- model_version_policy (the stand-in reads each model's models.config; no server needed) ---------------------------
POLICIES = [
    ("", [3]),  # no policy: TF Serving's default, the latest version
    ("model_version_policy { latest { num_versions: 2 } }", [2, 3]),
    ("model_version_policy { specific { versions: 1 versions: 3 } }", [1, 3]),
    ("model_version_policy { all {} }", [1, 2, 3]),
]


@pytest.fixture(scope="module")
def three_versions(tmp_path_factory):
    """A server over three versions of ``faces``; each test writes the ``models.config`` it reads (the server reads
    it at every request, as TF Serving re-reads a config it polls)."""
    base = tmp_path_factory.mktemp("policy")
    model = tiny_model(seed=0)
    for _ in range(3):
        export_model(model, base, "faces", warmup=False)
    with LocalModelServer(base) as server:
        yield base, server


@pytest.mark.parametrize("policy, served", POLICIES)
def test_the_version_policy_is_honoured(three_versions, policy, served):
    base, server = three_versions
    (base / "faces" / "models.config").write_text(
        f'model_config_list {{ config {{ name: "faces" base_path: "/models/faces" model_platform: "tensorflow" '
        f'{policy} version_labels {{ key: "stable" value: 1 }} }} }}')
    got, body = rest(server.rest_target, "GET", MODEL, "")
    assert got == 200 and sorted(int(s["version"]) for s in body["model_version_status"]) == served
    for version in (1, 2, 3):
        got, _ = rest(server.rest_target, "POST", f"{MODEL}/versions/{version}:predict", {"instances": [B64]})
        assert got == (200 if version in served else 404), version
    got, body = rest(server.rest_target, "GET", f"{MODEL}/metadata", "")
    assert body["model_spec"]["version"] == str(served[-1])  # the latest served answers
    # a label on a version the policy leaves out names a version that is not served
    got, body = rest(server.rest_target, "POST", f"{MODEL}/labels/stable:predict", {"instances": [B64]})
    assert got == (200 if 1 in served else 404), body
