"""The exported models a server answers for, and its answers as TF Serving gives them: which versions are
served (``model_version_policy``), version labels, model status, metadata and predictions, with TF Serving's
status codes and the key phrases of its messages.

:class:`~kfacemtl.serving.local_server.LocalModelServer` puts this behind gRPC and REST; the REST rules (paths,
JSON) are in :mod:`kfacemtl.serving.rest`.

Example:
    >>> repo = ModelRepository("saved_models")          # BASE/NAME/VERSION folders written by kfacemtl export
    >>> try:
    ...     repo.resolve("faces")
    ... except ServingStatus as e:                      # nothing exported there yet
    ...     print(e.code.name, e.message)
    NOT_FOUND Servable not found for request: Latest(faces)
"""
from __future__ import annotations

import threading
from pathlib import Path

import grpc
import tensorflow as tf
from google.protobuf import text_format
from tensorflow.core.protobuf import saved_model_pb2
from tensorflow_serving.apis import get_model_status_pb2
from tensorflow_serving.config import model_server_config_pb2

from kfacemtl.serving.export import list_versions

DEFAULT_SIGNATURE = "serving_default"


class ServingStatus(Exception):
    """A failed call: a gRPC status code and TF Serving's message (REST maps the code to an HTTP status).

    Example:
        >>> e = ServingStatus(grpc.StatusCode.NOT_FOUND, "Could not find any versions of model faces")
        >>> e.code.name, e.http_status
        ('NOT_FOUND', 404)
    """

    # TF Serving's HTTP status for each code (model_servers/http_server.cc)
    HTTP = {grpc.StatusCode.INVALID_ARGUMENT: 400, grpc.StatusCode.FAILED_PRECONDITION: 400,
            grpc.StatusCode.OUT_OF_RANGE: 400, grpc.StatusCode.NOT_FOUND: 404, grpc.StatusCode.ALREADY_EXISTS: 409,
            grpc.StatusCode.ABORTED: 409, grpc.StatusCode.PERMISSION_DENIED: 403,
            grpc.StatusCode.UNAUTHENTICATED: 401, grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
            grpc.StatusCode.CANCELLED: 499, grpc.StatusCode.UNIMPLEMENTED: 501, grpc.StatusCode.UNAVAILABLE: 503,
            grpc.StatusCode.DEADLINE_EXCEEDED: 504}

    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(message)
        self.code, self.message = code, message

    @property
    def http_status(self) -> int:
        return self.HTTP.get(self.code, 500)


def invalid(message: str) -> ServingStatus:
    """INVALID_ARGUMENT (REST 400): the request is wrong.

    Example:
        >>> invalid("Missing model name in request.").http_status
        400
    """
    return ServingStatus(grpc.StatusCode.INVALID_ARGUMENT, message)


def not_found(message: str) -> ServingStatus:
    """NOT_FOUND (REST 404): no such model or version.

    Example:
        >>> not_found("Could not find version 9 of model faces").http_status
        404
    """
    return ServingStatus(grpc.StatusCode.NOT_FOUND, message)


class ModelRepository:
    """The SavedModels under ``base`` (``NAME/VERSION/``), loaded on first use, served as ``BASE/NAME/models.config``
    says: its ``model_version_policy`` (``latest { num_versions: N }``, ``specific { versions: ... }``, ``all {}``;
    without one, TF Serving's default: the latest version) and its ``version_labels``.

    Example:
        >>> repo = ModelRepository("saved_models")
        >>> repo.served_versions("faces"), repo.labels("faces")    # nothing exported there
        ([], {})
    """

    def __init__(self, base):
        self.base = Path(base)
        self._loaded, self._lock = {}, threading.Lock()

    def _config(self, name: str):
        path = self.base / name / "models.config"
        if not path.is_file():
            return None
        config = text_format.Parse(path.read_text(), model_server_config_pb2.ModelServerConfig())
        return next((c for c in config.model_config_list.config if c.name == name), None)

    def labels(self, name: str) -> dict:
        """``{label: version}`` from the model's ``models.config``."""
        config = self._config(name) if _valid_name(name) else None
        return dict(config.version_labels) if config else {}

    def served_versions(self, name: str) -> list[int]:
        """The versions served, ascending: those on disk that the version policy keeps.

        Example:
            >>> ModelRepository("saved_models").served_versions("../etc")    # a served name, never a path
            []
        """
        if not _valid_name(name):
            return []
        on_disk = list_versions(self.base / name)
        config = self._config(name)
        policy = config.model_version_policy if config else None
        which = policy.WhichOneof("policy_choice") if policy else None
        if which == "all":
            return on_disk
        if which == "specific":
            return [v for v in on_disk if v in set(policy.specific.versions)]
        keep = policy.latest.num_versions if which == "latest" and policy.latest.num_versions else 1
        return on_disk[-keep:]

    def resolve(self, name: str, version: int | None = None, label: str | None = None) -> int:
        """The served version a request names: a number, a label, or neither (the latest)."""
        if version is not None and label:
            raise invalid(f"Both model version ({version}) and model version label ({label}) cannot be supplied.")
        served = self.served_versions(name)
        if label:
            labels = self.labels(name)
            if label not in labels:
                raise invalid(f"Unrecognized servable version label: {label}")
            version = labels[label]
        if version is None:
            if not served:
                raise not_found(f"Servable not found for request: Latest({name})")
            return served[-1]
        if version not in served:
            raise not_found(f"Servable not found for request: Specific({name}, {version})")
        return version

    def load(self, name: str, version: int):
        """``(loaded SavedModel, {signature: SignatureDef})`` of a version, loaded once."""
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

    def signature_defs(self, name: str, version: int | None = None, label: str | None = None) -> tuple[int, dict]:
        """``(version, {signature: SignatureDef})`` of the version a request names: what metadata shows and what
        REST reads a request's inputs against.

        Example:
            >>> try:
            ...     ModelRepository("saved_models").signature_defs("faces", 3)
            ... except ServingStatus as e:
            ...     print(e.message)
            Servable not found for request: Specific(faces, 3)
        """
        version = self.resolve(name, version, label)
        return version, self.load(name, version)[1]

    def status(self, name: str, version: int | None = None, label: str | None = None):
        """``GetModelStatusResponse``: every served version (newest first), or the one asked for, by number or
        label; a version that does not load is ``END`` with its error."""
        if label:
            version = self.resolve(name, label=label)
        served = self.served_versions(name)
        if version is not None and version not in served:
            raise not_found(f"Could not find version {version} of model {name}")
        if not served:
            raise not_found(f"Could not find any versions of model {name}")
        response = get_model_status_pb2.GetModelStatusResponse()
        for v in sorted([version] if version is not None else served, reverse=True):
            entry = response.model_version_status.add(version=v)
            entry.status.SetInParent()  # present even when OK, as TF Serving's JSON shows it
            try:
                self.load(name, v)
                entry.state = get_model_status_pb2.ModelVersionStatus.AVAILABLE
            except Exception as e:  # noqa: BLE001 - a broken version is reported, as TF Serving does
                entry.state = get_model_status_pb2.ModelVersionStatus.END
                entry.status.error_code = 2  # tensorflow.error.Code UNKNOWN
                entry.status.error_message = f"{type(e).__name__}: {e}"
        return response

    def signature_def(self, name: str, version: int, signature: str):
        """The ``SignatureDef`` a predict request names (default ``serving_default``); a missing one is
        FAILED_PRECONDITION, as TF Serving's ``Predict`` says."""
        signature = signature or DEFAULT_SIGNATURE
        defs = self.load(name, version)[1]
        if signature not in defs:
            raise ServingStatus(grpc.StatusCode.FAILED_PRECONDITION, f'Serving signature key "{signature}" not found.')
        return defs[signature]

    def predict(self, name: str, version: int | None, label: str | None, signature: str, inputs: dict,
                output_filter=()) -> tuple[int, dict]:
        """Run a signature: ``inputs`` {alias: array} → ``(version, {output: array})``, checked as TF Serving
        checks a ``PredictRequest`` (input aliases, ``output_filter``)."""
        version = self.resolve(name, version, label)
        sig = self.signature_def(name, version, signature)
        _check_aliases(sig, inputs, output_filter)
        out = self.run(name, version, signature or DEFAULT_SIGNATURE, inputs)
        return version, {k: v for k, v in out.items() if not output_filter or k in output_filter}

    def run(self, name: str, version: int, signature: str, inputs: dict) -> dict:
        """Call a loaded signature; the model's own errors become INVALID_ARGUMENT (bad input) or INTERNAL."""
        loaded = self.load(name, version)[0]
        try:
            out = loaded.signatures[signature](**{k: tf.convert_to_tensor(v) for k, v in inputs.items()})
        except (tf.errors.InvalidArgumentError, ValueError, TypeError) as e:
            raise invalid(getattr(e, "message", str(e))) from None
        except tf.errors.OpError as e:
            raise ServingStatus(grpc.StatusCode.INTERNAL, e.message) from None
        return {k: v.numpy() for k, v in out.items()}


def _valid_name(name: str) -> bool:
    return bool(name) and name[0].isalnum() and "/" not in name and ".." not in name


def _check_aliases(sig, inputs: dict, output_filter):
    """TF Serving's checks of a request's inputs and ``output_filter`` against the signature (predict_util.cc)."""
    sent, wanted = set(inputs), set(sig.inputs)
    if len(sent) != len(wanted):
        raise invalid(f"input size does not match signature: {len(sent)}!={len(wanted)} len({{{','.join(sorted(sent))}}})"
                      f" != len({{{','.join(sorted(wanted))}}}). Sent extra: {{{','.join(sorted(sent - wanted))}}}. "
                      f"Missing but required: {{{','.join(sorted(wanted - sent))}}}.")
    for alias in sorted(sent - wanted):
        raise invalid(f"input tensor alias not found in signature: {alias}. Inputs expected to be in the set "
                      f"{{{','.join(sorted(wanted))}}}.")
    seen = set()
    for alias in output_filter:
        if alias not in sig.outputs:
            raise invalid(f"output tensor alias not found in signature: {alias} Outputs expected to be in the set "
                          f"{{{','.join(sorted(sig.outputs))}}}.")
        if alias in seen:
            raise invalid(f"duplicate output tensor alias: {alias}")
        seen.add(alias)

