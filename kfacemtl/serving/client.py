"""Call an exported model: over gRPC or REST (TF Serving) or locally from the SavedModel.

All three predictors take a list of images (file paths or encoded JPEG/PNG bytes), send them
in batches through the ``serving_default`` signature (see :mod:`kfacemtl.serving.export`) and return
one result per image, keyed by task::

    {"age": 31.4, "gender": {"class": "female", "label": 1, "probs": [0.07, 0.93]},
     "action_units": {"active": "AU6,AU12", "probs": [...]}, "valence_arousal": [0.6, 0.3], ...}

Errors are :class:`ServingError` subclasses naming the model, version and image.

Example:
    >>> import numpy as np, tensorflow as tf
    >>> from kfacemtl.models import build_model
    >>> from kfacemtl.serving import export_model
    >>> from kfacemtl.tasks import resolve_tasks
    >>> model = build_model(resolve_tasks(["gender", "age"]), input_shape=(32, 32, 3), widths=(4,), depths=1)
    >>> path = export_model(model, "saved_models", "faces")             # saved_models/faces/1
    >>> png = tf.io.encode_png(np.zeros((40, 50, 3), "uint8")).numpy()   # any size: resized in the graph
    >>> answer = LocalPredictor(path).predict([png])[0]              # Client("host:8500", "faces") over a server
    >>> sorted(answer), sorted(answer["gender"]), type(answer["age"]).__name__
    (['age', 'gender'], ['class', 'label', 'probs'], 'float')
"""

from __future__ import annotations

import base64
import json
import os
import re
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Sequence

import grpc
import numpy as np
import tensorflow as tf
from tensorflow.core.framework import types_pb2
from google.protobuf import json_format
from tensorflow_serving.apis import (get_model_metadata_pb2, get_model_status_pb2, model_service_pb2_grpc, predict_pb2,
                                     prediction_service_pb2_grpc)

from kfacemtl.serving.errors import (InvalidInputError, ModelNotFoundError, ServerUnavailableError, ServingError,
                                     clean_message, which_image)
from kfacemtl.models.answers import ERROR_OUTPUT, group_outputs
from kfacemtl.tables import text_table

DEFAULT_SIGNATURE = "serving_default"
# messages of up to 256 MiB (a batch of photos); gRPC's own default is 4 MiB
GRPC_OPTIONS = [("grpc.max_send_message_length", 256 * 2 ** 20), ("grpc.max_receive_message_length", 256 * 2 ** 20)]


def read_images(images: Sequence) -> tuple[list[bytes], list[str]]:
    """Paths or bytes → ``(encoded bytes, display names)``; a missing file is a clear error.

    Example:
        >>> data, names = read_images([b"any bytes"])
        >>> names
        ['image #0 (bytes)']
        >>> try:
        ...     read_images(["no-such-face.jpg"])
        ... except ServingError as e:
        ...     print(e)
        image file 'no-such-face.jpg' does not exist
    """
    data, names = [], []
    for i, item in enumerate(images):
        if isinstance(item, (bytes, bytearray)):
            data.append(bytes(item))
            names.append(f"image #{i} (bytes)")
        else:
            path = Path(item)
            if not path.is_file():
                raise ServingError(f"image file {str(path)!r} does not exist")
            data.append(path.read_bytes())
            names.append(str(path))
    return data, names


class _Predictor:
    """Batching and result assembly shared by the local and remote predictors."""

    batch_size = 32

    def _predict_batch(self, data: list[bytes], names: list[str]) -> dict:
        raise NotImplementedError

    def _invalid(self, details: str, names: Sequence[str]) -> InvalidInputError:
        image, reason = which_image(details, names)
        where = f"{image}: " if image else ""
        return InvalidInputError(f"{self.describe()}: {where}{reason}", image=image, detail=reason)

    def _checked_batch(self, data, names) -> dict:
        """One request; when it fails on bad input without saying which image, find it one by one."""
        try:
            return self._predict_batch(data, names)
        except InvalidInputError as e:
            if e.image is None and len(data) > 1:
                for d, n in zip(data, names):
                    self._checked_batch([d], [n])
            raise

    def predict(self, images: Sequence, errors: str = "raise") -> list[dict]:
        """Per-image results keyed by task, in input order (see the module docstring).

        An image the model could not read (the bytes signature's ``error`` output names why) raises
        :class:`InvalidInputError` naming it (``errors="raise"``), or with ``errors="return"`` its result is
        ``{"error": reason}`` and the other images are answered.
        """
        if errors not in ("raise", "return"):
            raise ServingError(f"errors must be 'raise' or 'return', got {errors!r}")
        data, names = read_images(images)
        if not data:
            raise InvalidInputError(f"{self.describe()}: empty request: give at least one image")
        results = []
        for start in range(0, len(data), self.batch_size):
            batch, batch_names = data[start:start + self.batch_size], names[start:start + self.batch_size]
            outputs = self._checked_batch(batch, batch_names)
            failed = outputs.pop(ERROR_OUTPUT, None)
            answers = group_outputs(outputs, len(batch))
            for i, reason in enumerate([] if failed is None else np.asarray(failed).tolist()):
                reason = reason.decode("utf-8", "replace") if isinstance(reason, bytes) else reason
                if reason and errors == "raise":
                    raise self._invalid(f"image {i} {reason}", batch_names)
                if reason:
                    answers[i] = {ERROR_OUTPUT: reason}
            results += answers
        return results

    def describe(self) -> str:
        raise NotImplementedError


class LocalPredictor(_Predictor):
    """Run an exported SavedModel version in this process (no server).

    Args:
        saved_model_dir: ``BASE/NAME/VERSION`` written by :func:`kfacemtl.serving.export_model`.
        signature: the signature to call (``serving_default`` takes encoded images).
        batch_size: images per call.

    Example:
        >>> import numpy as np, tensorflow as tf
        >>> from kfacemtl.models import build_model
        >>> from kfacemtl.serving import export_model
        >>> from kfacemtl.tasks import resolve_tasks
        >>> model = build_model(resolve_tasks(["age"]), input_shape=(16, 16, 3), widths=(4,), depths=1)
        >>> path = export_model(model, "saved_models", "ages", warmup=False)
        >>> png = tf.io.encode_png(np.zeros((16, 16, 3), "uint8")).numpy()
        >>> predictor = LocalPredictor(path)
        >>> predictor.describe(), list(predictor.predict([png])[0])
        ('SavedModel saved_models/ages/1', ['age'])
    """

    def __init__(self, saved_model_dir, signature: str = DEFAULT_SIGNATURE, batch_size: int = 32):
        self.path = Path(saved_model_dir)
        if not (self.path / "saved_model.pb").is_file():
            raise ModelNotFoundError(f"{self.path} is not a SavedModel folder (no saved_model.pb); "
                                     f"pass BASE/NAME/VERSION")
        self._tf = tf
        loaded = tf.saved_model.load(str(self.path))
        if signature not in loaded.signatures:
            raise ModelNotFoundError(f"{self.path} has no signature {signature!r}; it has {sorted(loaded.signatures)}")
        self._loaded, self.signature, self.batch_size = loaded, loaded.signatures[signature], int(batch_size)

    def describe(self) -> str:
        return f"SavedModel {self.path}"

    @property
    def image_size(self) -> tuple:
        """``(height, width)`` of the model's input, from the ``serving_float`` signature."""
        spec = self._loaded.signatures["serving_float"].structured_input_signature[1]
        return tuple(next(iter(spec.values())).shape[1:3])

    def _predict_batch(self, data, names):
        tf = self._tf
        try:
            out = self.signature(images=tf.constant(data, dtype=tf.string))
        except tf.errors.InvalidArgumentError as e:
            raise self._invalid(clean_message(e.message), names) from None
        return {k: v.numpy() for k, v in out.items()}


class Client(_Predictor):
    """A TF Serving client over gRPC (``PredictionService``, port 8500) or REST (port 8501).

    Args:
        target: ``host:port``.
        model_name: the served model's name.
        version: a specific version number; or
        label: a version label from ``models.config`` (``stable``, ``canary``); default the latest.
        protocol: ``grpc`` or ``rest``.
        signature: the signature to call.
        timeout: seconds per request.
        retries: extra attempts on UNAVAILABLE (server starting or restarting), with
            exponential backoff starting at ``backoff`` seconds.
        batch_size: images per request.

    Example:
        >>> Client("localhost:8500", "faces", label="stable").describe()      # gRPC; .predict(["a.jpg", ...])
        "model 'faces' label 'stable' at localhost:8500"
        >>> Client("localhost:8501", "faces", version=2, protocol="rest").describe()
        "model 'faces' version 2 at localhost:8501"
    """

    def __init__(self, target: str, model_name: str, version: int | None = None, label: str | None = None,
                 protocol: str = "grpc", signature: str = DEFAULT_SIGNATURE, timeout: float = 10.0,
                 retries: int = 3, backoff: float = 0.5, batch_size: int = 32):
        if version is not None and label is not None:
            raise ServingError("give a version or a label, not both")
        if protocol not in ("grpc", "rest"):
            raise ServingError(f"protocol must be 'grpc' or 'rest', got {protocol!r}")
        self.target, self.model_name, self.version, self.label = target, model_name, version, label
        self.protocol, self.signature, self.timeout = protocol, signature, float(timeout)
        self.retries, self.backoff, self.batch_size = int(retries), float(backoff), int(batch_size)
        self._stub = self._status_stub = None
        self.sleep = time.sleep  # how the retries wait (a test may record the waits instead)

    def describe(self) -> str:
        which = f" version {self.version}" if self.version is not None else \
            f" label {self.label!r}" if self.label else ""
        return f"model {self.model_name!r}{which} at {self.target}"

    # -- gRPC ----------------------------------------------------------------------------------
    def _grpc_stub(self):
        if self._stub is None:
            self._channel = grpc.insecure_channel(self.target, options=GRPC_OPTIONS)
            self._stub = prediction_service_pb2_grpc.PredictionServiceStub(self._channel)
        return self._stub

    def _model_spec(self, spec):
        spec.name = self.model_name
        if self.version is not None:
            spec.version.value = int(self.version)
        elif self.label:
            spec.version_label = self.label

    def _call(self, fn):
        """Run ``fn`` with retries on UNAVAILABLE; map gRPC/HTTP failures to ServingError."""
        delay = self.backoff
        for attempt in range(self.retries + 1):
            try:
                return fn()
            except ServerUnavailableError:
                if attempt == self.retries:
                    raise
                self.sleep(delay)
                delay *= 2
        raise AssertionError("unreachable")

    def _error(self, code: str, details: str, names) -> ServingError:
        """The error for a failed call: ``code`` is the gRPC status name (REST's HTTP status mapped back the way TF
        Serving maps codes to HTTP), ``details`` the server's message."""
        details = clean_message(details or "")
        if code == "UNAVAILABLE":
            return ServerUnavailableError(f"{self.describe()}: server unavailable after {self.retries} "
                                          f"retries ({details})")
        if code == "DEADLINE_EXCEEDED":
            return ServerUnavailableError(f"{self.describe()}: no answer within {self.timeout:g} s")
        if code == "NOT_FOUND":
            return ModelNotFoundError(f"{self.describe()}: not found on the server ({details})")
        if "Unrecognized servable version label" in details:  # TF Serving's INVALID_ARGUMENT / 400
            return ModelNotFoundError(f"{self.describe()}: no such label on the server ({details})")
        if re.search(r"[Ss]ignature (key|name).* not found", details):  # FAILED_PRECONDITION (gRPC) / 400 (REST)
            return ServingError(f"{self.describe()}: no signature {self.signature!r} on the server ({details})")
        if code == "RESOURCE_EXHAUSTED":
            return ServingError(f"{self.describe()}: the server refused the request's size ({details}); "
                                f"send fewer images per request (batch_size)")
        if code == "INVALID_ARGUMENT" and names:
            return self._invalid(details, names)
        return ServingError(f"{self.describe()}: {code}: {details}")

    def _grpc_error(self, e, names):
        return self._error(e.code().name, e.details(), names)

    def _grpc_predict(self, data, names):
        request = predict_pb2.PredictRequest()
        self._model_spec(request.model_spec)
        request.model_spec.signature_name = self.signature
        request.inputs["images"].CopyFrom(tf.make_tensor_proto(data, dtype=tf.string))

        def once():
            try:
                return self._grpc_stub().Predict(request, timeout=self.timeout)
            except grpc.RpcError as e:
                raise self._grpc_error(e, names) from None

        response = self._call(once)
        return {k: tf.make_ndarray(v) for k, v in response.outputs.items()}

    # -- REST ----------------------------------------------------------------------------------
    def _rest_url(self, verb: str) -> str:
        url = f"http://{self.target}/v1/models/{self.model_name}"
        if self.version is not None:
            url += f"/versions/{int(self.version)}"
        elif self.label:
            url += f"/labels/{self.label}"
        return url + verb

    def _rest(self, url, body, names):
        def once():
            req = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"},
                                         method="POST" if body is not None else "GET")
            try:
                with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                    return json.loads(resp.read())
            except urllib.error.HTTPError as e:
                try:
                    details = json.loads(e.read()).get("error", "")
                except (ValueError, AttributeError):
                    details = str(e.reason)
                raise self._error(_HTTP_CODES.get(e.code, f"HTTP {e.code}"), details, names) from None
            except (urllib.error.URLError, ConnectionError, TimeoutError) as e:
                raise ServerUnavailableError(f"{self.describe()}: server unavailable after {self.retries} "
                                             f"retries ({getattr(e, 'reason', e)})") from None

        return self._call(once)

    def _rest_predict(self, data, names):
        body = json.dumps({"signature_name": self.signature,
                           "inputs": {"images": [{"b64": base64.b64encode(d).decode()} for d in data]}})
        out = rest_outputs(self._rest(self._rest_url(":predict"), body.encode(), names))
        return {k: np.asarray(v, dtype=object if _is_text(v) else None) for k, v in out.items()}

    def _predict_batch(self, data, names):
        return self._grpc_predict(data, names) if self.protocol == "grpc" else self._rest_predict(data, names)

    def metadata(self) -> dict:
        """``{signature: {"inputs": {name: dtype}, "outputs": {name: dtype}}}`` of the served model."""
        if self.protocol == "rest":
            meta = self._rest(self._rest_url("/metadata"), None, ())
            defs = meta["metadata"]["signature_def"]["signature_def"]
            return {s: {io: {k: v["dtype"] for k, v in d[io].items()} for io in ("inputs", "outputs")}
                    for s, d in defs.items()}
        request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
        self._model_spec(request.model_spec)

        def once():
            try:
                return self._grpc_stub().GetModelMetadata(request, timeout=self.timeout)
            except grpc.RpcError as e:
                raise self._grpc_error(e, ()) from None

        response = self._call(once)
        sigs = get_model_metadata_pb2.SignatureDefMap()
        response.metadata["signature_def"].Unpack(sigs)
        return {s: {"inputs": {k: types_pb2.DataType.Name(v.dtype) for k, v in d.inputs.items()},
                    "outputs": {k: types_pb2.DataType.Name(v.dtype) for k, v in d.outputs.items()}}
                for s, d in sigs.signature_def.items()}

    def status(self) -> list[dict]:
        """The served versions of the model (or the one asked for), newest first:
        ``[{"version": 2, "state": "AVAILABLE", "error_code": "OK", "error_message": ""}, ...]``
        (``ModelService.GetModelStatus`` over gRPC, ``GET /v1/models/NAME`` over REST)."""
        if self.protocol == "rest":
            versions = self._rest(self._rest_url(""), None, ())["model_version_status"]
        else:
            request = get_model_status_pb2.GetModelStatusRequest()
            self._model_spec(request.model_spec)

            def once():
                try:
                    if self._status_stub is None:
                        self._grpc_stub()
                        self._status_stub = model_service_pb2_grpc.ModelServiceStub(self._channel)
                    return self._status_stub.GetModelStatus(request, timeout=self.timeout)
                except grpc.RpcError as e:
                    raise self._grpc_error(e, ()) from None

            versions = json_format.MessageToDict(self._call(once), preserving_proto_field_name=True,
                                                 always_print_fields_with_no_presence=True)["model_version_status"]
        return [{"version": int(v["version"]), "state": v["state"], "error_code": v["status"]["error_code"],
                 "error_message": v["status"]["error_message"]} for v in versions]

    def close(self):
        if self._stub is not None:
            self._channel.close()
            self._stub = self._status_stub = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


# TF Serving's HTTP status for each gRPC code (http_server.cc), read back
_HTTP_CODES = {400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED", 404: "NOT_FOUND",
               409: "ABORTED", 429: "RESOURCE_EXHAUSTED", 499: "CANCELLED", 500: "INTERNAL", 501: "UNIMPLEMENTED",
               503: "UNAVAILABLE", 504: "DEADLINE_EXCEEDED"}


def rest_outputs(body: dict) -> dict:
    """A REST predict response in either of TF Serving's shapes → ``{output: column}``: ``{"outputs": ...}``
    (the answer to ``inputs``, columns) or ``{"predictions": ...}`` (the answer to ``instances``, one row per
    image). A signature with one output is answered without its name: it comes back as ``"output"``.

    Example:
        >>> rest_outputs({"predictions": [{"age": 31.5, "gender_class": "female"}, {"age": 40.0, "gender_class": "male"}]})
        {'age': [31.5, 40.0], 'gender_class': ['female', 'male']}
        >>> rest_outputs({"outputs": {"age": [31.5, 40.0]}}) == rest_outputs({"predictions": [{"age": 31.5}, {"age": 40.0}]})
        True
    """
    if "outputs" in body:
        out = body["outputs"]
        return out if isinstance(out, dict) else {"output": out}
    if "predictions" in body:
        rows = body["predictions"]
        if rows and all(isinstance(r, dict) for r in rows):
            return {k: [r[k] for r in rows] for k in rows[0]}
        return {"output": rows}
    raise ServingError(f"a REST predict response has 'outputs' or 'predictions'; got keys {sorted(body)}")


def _is_text(values) -> bool:
    while isinstance(values, list) and values:
        values = values[0]
    return isinstance(values, str)


def format_results(results: Sequence[dict], names: Sequence[str]) -> str:
    """A plain-text table: one row per image, one short column per task.

    Example:
        >>> results = [{"age": 31.4, "gender": {"class": "female", "probs": [0.1, 0.9]}}]
        >>> print(format_results(results, ["face1.jpg"]))
        image      age   gender
        ---------  ----  -------------
        face1.jpg  31.4  female (0.90)
    """
    if not results:
        return "(no images)"
    tasks = list(results[0])
    rows = [[os.path.basename(n) if os.sep in n else n] + [_short(r[t]) for t in tasks]
            for n, r in zip(names, results)]
    return text_table(["image"] + tasks, rows)


def _short(value) -> str:
    if isinstance(value, dict):
        if "class" in value:
            return f"{value['class']} ({max(value['probs']):.2f})" if "probs" in value else value["class"]
        if "active" in value:
            return value["active"] or "-"
        return json.dumps(value)
    if isinstance(value, list):
        return ", ".join(f"{v:+.2f}" for v in value)
    return f"{value:.1f}" if isinstance(value, float) else str(value)
