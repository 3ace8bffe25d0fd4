"""A small in-process stand-in for ``tensorflow_model_server``, for tests, notebooks and benchmarks.

The TF Serving binary cannot be installed everywhere (not on these CPU machines), so the
serving path is proven against this server: the official ``PredictionService`` protos over
the real gRPC stack (``Predict`` and ``GetModelMetadata``) and TF Serving's REST predict and
metadata API, backed by the exported SavedModels under ``base``, with the version labels of
``BASE/NAME/models.config``. Errors use TF Serving's status codes: NOT_FOUND for an unknown
model, version or label; INVALID_ARGUMENT for bad input (the signature's own checks).
Not for production: use ``tensorflow/serving`` (docs/guide/serving.md).

Example:
    >>> from kfacemtl.serving.client import Client, ModelNotFoundError
    >>> with LocalModelServer("saved_models") as server:          # kfacemtl export writes NAME/VERSION/ there
    ...     try:
    ...         Client(server.grpc_target, "faces", retries=0).predict([b"no model yet"])
    ...     except ModelNotFoundError as e:                           # TF Serving's answer, NOT_FOUND
    ...         print(str(e).partition("(")[2][:-1])
    Servable not found for request: Latest(faces)
"""

from __future__ import annotations

import base64
import json
import re
import threading
from concurrent import futures
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import grpc
import tensorflow as tf
from google.protobuf import text_format
from tensorflow.core.framework import types_pb2
from tensorflow.core.protobuf import saved_model_pb2
from tensorflow_serving.apis import get_model_metadata_pb2, predict_pb2, prediction_service_pb2_grpc
from tensorflow_serving.config import model_server_config_pb2

from kfacemtl.serving.export import list_versions
from kfacemtl.serving.client import GRPC_OPTIONS


class _Error(Exception):
    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(message)
        self.code, self.message = code, message


_HTTP = {grpc.StatusCode.NOT_FOUND: 404, grpc.StatusCode.INVALID_ARGUMENT: 400, grpc.StatusCode.INTERNAL: 500}


class ModelRepository:
    """The SavedModels under ``base`` (``NAME/VERSION/``), loaded on first use, with their labels.

    Example:
        >>> repo = ModelRepository("saved_models")   # NAME/VERSION/ folders written by kfacemtl export
        >>> repo.labels("faces")                      # from saved_models/faces/models.config; none here
        {}
    """

    def __init__(self, base):
        self.base = Path(base)
        self._loaded, self._lock = {}, threading.Lock()

    def labels(self, name: str) -> dict:
        path = self.base / name / "models.config"
        if not path.is_file():
            return {}
        config = text_format.Parse(path.read_text(), model_server_config_pb2.ModelServerConfig())
        for c in config.model_config_list.config:
            if c.name == name:
                return dict(c.version_labels)
        return {}

    def resolve(self, name: str, version: int | None = None, label: str | None = None) -> int:
        ok = bool(name) and name[0].isalnum() and "/" not in name  # a served name, never a path
        versions = list_versions(self.base / name) if ok else []
        if not versions:
            raise _Error(grpc.StatusCode.NOT_FOUND, f"Servable not found for request: Latest({name})")
        if label:
            labels = self.labels(name)
            if label not in labels:
                raise _Error(grpc.StatusCode.NOT_FOUND, f"Unrecognized servable version label: {label}")
            version = labels[label]
        if version is None:
            return versions[-1]
        if version not in versions:
            raise _Error(grpc.StatusCode.NOT_FOUND, f"Servable not found for request: Specific({name}, {version})")
        return version

    def load(self, name: str, version: int):
        key = (name, version)
        with self._lock:
            if key not in self._loaded:
                path = self.base / name / str(version)
                loaded = tf.saved_model.load(str(path))
                proto = saved_model_pb2.SavedModel()
                proto.ParseFromString((path / "saved_model.pb").read_bytes())
                defs = {k: v for k, v in proto.meta_graphs[0].signature_def.items() if not k.startswith("__")}
                self._loaded[key] = (loaded, defs)
            return self._loaded[key]

    def predict(self, name, version, label, signature, inputs: dict) -> tuple[int, dict]:
        """Run a signature: ``inputs`` {name: array} → ``(version, {output: array})``."""
        version = self.resolve(name, version, label)
        loaded, defs = self.load(name, version)
        signature = signature or "serving_default"
        if signature not in loaded.signatures:
            raise _Error(grpc.StatusCode.INVALID_ARGUMENT,
                         f"Serving signature name: \"{signature}\" not found in signature def")
        expected = set(defs[signature].inputs)
        if set(inputs) != expected:
            raise _Error(grpc.StatusCode.INVALID_ARGUMENT,
                         f"input names {sorted(inputs)} do not match the signature's {sorted(expected)}")
        try:
            out = loaded.signatures[signature](**{k: tf.convert_to_tensor(v) for k, v in inputs.items()})
        except (tf.errors.InvalidArgumentError, ValueError, TypeError) as e:
            raise _Error(grpc.StatusCode.INVALID_ARGUMENT, getattr(e, "message", str(e))) from None
        except tf.errors.OpError as e:
            raise _Error(grpc.StatusCode.INTERNAL, e.message) from None
        return version, {k: v.numpy() for k, v in out.items()}


class _PredictionService(prediction_service_pb2_grpc.PredictionServiceServicer):
    def __init__(self, repo: ModelRepository):
        self.repo = repo

    @staticmethod
    def _spec(spec):
        version = spec.version.value if spec.HasField("version") else None
        return spec.name, version, spec.version_label or None

    def Predict(self, request, context):
        try:
            name, version, label = self._spec(request.model_spec)
            inputs = {k: tf.make_ndarray(v) for k, v in request.inputs.items()}
            version, out = self.repo.predict(name, version, label, request.model_spec.signature_name, inputs)
        except _Error as e:
            context.abort(e.code, e.message)
        response = predict_pb2.PredictResponse()
        response.model_spec.name = name
        response.model_spec.version.value = version
        response.model_spec.signature_name = request.model_spec.signature_name or "serving_default"
        for k, v in out.items():
            response.outputs[k].CopyFrom(tf.make_tensor_proto(v))
        return response

    def GetModelMetadata(self, request, context):
        try:
            if list(request.metadata_field) != ["signature_def"]:
                raise _Error(grpc.StatusCode.INVALID_ARGUMENT, "Metadata field(s) other than signature_def "
                                                               "are not supported")
            name, version, label = self._spec(request.model_spec)
            version = self.repo.resolve(name, version, label)
            _, defs = self.repo.load(name, version)
        except _Error as e:
            context.abort(e.code, e.message)
        sigs = get_model_metadata_pb2.SignatureDefMap()
        for k, v in defs.items():
            sigs.signature_def[k].CopyFrom(v)
        response = get_model_metadata_pb2.GetModelMetadataResponse()
        response.model_spec.name = name
        response.model_spec.version.value = version
        response.metadata["signature_def"].Pack(sigs)
        return response


_REST_PATH = re.compile(r"^/v1/models/([^/:]+)(?:/versions/(\d+)|/labels/([^/:]+))?(:predict|/metadata)?$")


def _rest_handler(repo: ModelRepository):
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):  # quiet
            pass

        def _send(self, status: int, body: dict):
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _route(self):
            m = _REST_PATH.match(self.path)
            if not m:
                raise _Error(grpc.StatusCode.NOT_FOUND, f"Malformed request: {self.command} {self.path}")
            name, version, label, verb = m.groups()
            return name, int(version) if version else None, label, verb

        def do_GET(self):
            try:
                name, version, label, verb = self._route()
                if verb != "/metadata":
                    raise _Error(grpc.StatusCode.NOT_FOUND, f"Malformed request: GET {self.path}")
                version = repo.resolve(name, version, label)
                _, defs = repo.load(name, version)
                sig = {k: {"inputs": {i: {"dtype": types_pb2.DataType.Name(t.dtype), "name": t.name}
                                      for i, t in d.inputs.items()},
                           "outputs": {o: {"dtype": types_pb2.DataType.Name(t.dtype), "name": t.name}
                                       for o, t in d.outputs.items()},
                           "method_name": d.method_name} for k, d in defs.items()}
                self._send(200, {"model_spec": {"name": name, "version": str(version)},
                                 "metadata": {"signature_def": {"signature_def": sig}}})
            except _Error as e:
                self._send(_HTTP.get(e.code, 500), {"error": e.message})

        def do_POST(self):
            try:
                name, version, label, verb = self._route()
                if verb != ":predict":
                    raise _Error(grpc.StatusCode.NOT_FOUND, f"Malformed request: POST {self.path}")
                try:
                    body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
                except ValueError as e:
                    raise _Error(grpc.StatusCode.INVALID_ARGUMENT, f"JSON Parse error: {e}") from None
                if "inputs" in body:
                    inputs = body["inputs"] if isinstance(body["inputs"], dict) else {"images": body["inputs"]}
                elif "instances" in body:
                    inputs = {"images": body["instances"]}
                else:
                    raise _Error(grpc.StatusCode.INVALID_ARGUMENT, "Missing 'inputs' or 'instances' key")
                inputs = {k: _from_json(v) for k, v in inputs.items()}
                _, out = repo.predict(name, version, label, body.get("signature_name"), inputs)
                self._send(200, {"outputs": {k: _to_json(v) for k, v in out.items()}})
            except _Error as e:
                self._send(_HTTP.get(e.code, 500), {"error": e.message})

    return Handler


def _from_json(value):
    """TF Serving's REST encoding: ``{"b64": ...}`` is binary; anything else a plain value."""
    if isinstance(value, list):
        return [_from_json(v) for v in value] if value and isinstance(value[0], (dict, list)) else value
    if isinstance(value, dict) and "b64" in value:
        try:
            return base64.b64decode(value["b64"], validate=True)
        except ValueError:
            raise _Error(grpc.StatusCode.INVALID_ARGUMENT, "Unable to base64 decode") from None
    return value


def _to_json(array):
    if array.dtype == object:
        return [x.decode("utf-8", "replace") if isinstance(x, bytes) else _to_json(x) for x in array]
    return array.tolist()


class LocalModelServer:
    """Serve ``base`` on 127.0.0.1 over gRPC and REST until :meth:`stop` (or the ``with`` block ends).

    Args:
        base: the folder of exported models (``NAME/VERSION/``).
        grpc_port, rest_port: 0 = a free port (read ``grpc_target`` / ``rest_target``).
        workers: concurrent requests.

    Example:
        >>> with LocalModelServer("saved_models") as server:           # free ports unless given
        ...     server.grpc_target.startswith("127.0.0.1:"), server.rest_target.startswith("127.0.0.1:")
        (True, True)
    """

    def __init__(self, base, grpc_port: int = 0, rest_port: int = 0, workers: int = 4):
        self.repo = ModelRepository(base)
        self._grpc = grpc.server(futures.ThreadPoolExecutor(max_workers=workers), options=GRPC_OPTIONS)
        prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(_PredictionService(self.repo), self._grpc)
        self.grpc_port = self._grpc.add_insecure_port(f"127.0.0.1:{grpc_port}")
        self._http = ThreadingHTTPServer(("127.0.0.1", rest_port), _rest_handler(self.repo))
        self.rest_port = self._http.server_address[1]
        self._thread = None

    @property
    def grpc_target(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def rest_target(self) -> str:
        return f"127.0.0.1:{self.rest_port}"

    def start(self) -> "LocalModelServer":
        self._grpc.start()
        self._thread = threading.Thread(target=self._http.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self):
        self._grpc.stop(grace=None)
        self._http.shutdown()
        self._http.server_close()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
