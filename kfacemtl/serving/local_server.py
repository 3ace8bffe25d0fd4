"""A small in-process stand-in for ``tensorflow_model_server``, for tests, notebooks and benchmarks.

The TF Serving binary cannot be installed everywhere (not on these CPU machines), so the serving path is proven
against this server: the official ``PredictionService`` (``Predict``, ``GetModelMetadata``) and ``ModelService``
(``GetModelStatus``) protos over the real gRPC stack, and TF Serving's REST API (:mod:`kfacemtl.serving.rest`),
backed by the exported SavedModels under ``base`` and served as each ``BASE/NAME/models.config`` says (version
policy, labels; :mod:`kfacemtl.serving.repository`), with TF Serving's status codes. ``batching=True`` merges
concurrent requests as ``--enable_batching`` does (:mod:`kfacemtl.serving.batching`), with each model's
``batching_parameters.txt``. ``tests/serving/test_conformance.py`` holds the cases, run against this server and
against a real ``tensorflow_model_server`` where one is on PATH. Not for production: use ``tensorflow/serving``
(docs/guide/serving.md).

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

import json
import threading
from concurrent import futures
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import grpc
import tensorflow as tf
from tensorflow_serving.apis import (get_model_metadata_pb2, model_service_pb2_grpc, predict_pb2,
                                     prediction_service_pb2_grpc)

from kfacemtl.serving.batching import Batcher, batching_parameters
from kfacemtl.serving.client import GRPC_OPTIONS
from kfacemtl.serving.repository import DEFAULT_SIGNATURE, ModelRepository, ServingStatus, invalid
from kfacemtl.serving.rest import handle


class BatchingRepository(ModelRepository):
    """A :class:`ModelRepository` whose signature calls go through one :class:`Batcher` per model, with the
    model's ``batching_parameters.txt`` (the export's defaults where it has none).

    Example:
        >>> BatchingRepository("saved_models").batcher("faces").max_batch_size   # no batching_parameters.txt there
        64
    """

    def __init__(self, base):
        super().__init__(base)
        self._batchers = {}

    def batcher(self, name: str) -> Batcher:
        with self._lock:
            if name not in self._batchers:
                path = self.base / name / "batching_parameters.txt"
                params = batching_parameters(path.read_text() if path.is_file() else "")
                self._batchers[name] = Batcher(lambda key, x: ModelRepository.run(self, *key, x), **params)
            return self._batchers[name]

    def run(self, name, version, signature, inputs):
        return self.batcher(name)((name, version, signature), inputs)


def _model_spec(spec):
    return spec.name, spec.version.value if spec.HasField("version") else None, spec.version_label or None


class _PredictionService(prediction_service_pb2_grpc.PredictionServiceServicer):
    def __init__(self, repo: ModelRepository):
        self.repo = repo

    def Predict(self, request, context):
        try:
            name, version, label = _model_spec(request.model_spec)
            inputs = {k: tf.make_ndarray(v) for k, v in request.inputs.items()}
            version, out = self.repo.predict(name, version, label, request.model_spec.signature_name, inputs,
                                             list(request.output_filter))
        except ServingStatus as e:
            context.abort(e.code, e.message)
        response = predict_pb2.PredictResponse()
        response.model_spec.name = name
        response.model_spec.version.value = version
        response.model_spec.signature_name = request.model_spec.signature_name or DEFAULT_SIGNATURE
        for k, v in out.items():
            response.outputs[k].CopyFrom(tf.make_tensor_proto(v))
        return response

    def GetModelMetadata(self, request, context):
        try:
            if list(request.metadata_field) != ["signature_def"]:
                raise invalid("Metadata field(s) other than signature_def are not supported")
            name, version, label = _model_spec(request.model_spec)
            version, defs = self.repo.signature_defs(name, version, label)
        except ServingStatus as e:
            context.abort(e.code, e.message)
        sigs = get_model_metadata_pb2.SignatureDefMap()
        for k, v in defs.items():
            sigs.signature_def[k].CopyFrom(v)
        response = get_model_metadata_pb2.GetModelMetadataResponse()
        response.model_spec.name = name
        response.model_spec.version.value = version
        response.metadata["signature_def"].Pack(sigs)
        return response


class _ModelService(model_service_pb2_grpc.ModelServiceServicer):
    def __init__(self, repo: ModelRepository):
        self.repo = repo

    def GetModelStatus(self, request, context):
        try:
            if not request.HasField("model_spec"):
                raise invalid("Missing ModelSpec")
            return self.repo.status(*_model_spec(request.model_spec))
        except ServingStatus as e:
            context.abort(e.code, e.message)


def _rest_handler(repo: ModelRepository):
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):  # quiet
            pass

        def _answer(self):
            length = int(self.headers.get("Content-Length") or 0)
            status, body = handle(repo, self.command, self.path, self.rfile.read(length) if length else b"")
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = do_PUT = do_DELETE = _answer

    return Handler


class LocalModelServer:
    """Serve ``base`` on 127.0.0.1 over gRPC and REST until :meth:`stop` (or the ``with`` block ends).

    Args:
        base: the folder of exported models (``NAME/VERSION/``).
        grpc_port, rest_port: 0 = a free port (read ``grpc_target`` / ``rest_target``).
        workers: concurrent requests.
        batching: merge concurrent requests into one call of the signature, as TF Serving's
            ``--enable_batching --batching_parameters_file=BASE/NAME/batching_parameters.txt``.

    Example:
        >>> with LocalModelServer("saved_models") as server:           # free ports unless given
        ...     server.grpc_target.startswith("127.0.0.1:"), server.rest_target.startswith("127.0.0.1:")
        (True, True)
    """

    def __init__(self, base, grpc_port: int = 0, rest_port: int = 0, workers: int = 4, batching: bool = False):
        self.repo = BatchingRepository(base) if batching else ModelRepository(base)
        self._grpc = grpc.server(futures.ThreadPoolExecutor(max_workers=workers), options=GRPC_OPTIONS)
        prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(_PredictionService(self.repo), self._grpc)
        model_service_pb2_grpc.add_ModelServiceServicer_to_server(_ModelService(self.repo), self._grpc)
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
