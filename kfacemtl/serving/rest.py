"""TF Serving's REST API for a predict-only server (``api_rest.md``; ``http_rest_api_handler.cc``,
``json_tensor.cc``): paths, JSON requests in row (``instances``) or columnar (``inputs``) form, answers as
``predictions`` or ``outputs``, model status and metadata, errors as ``{"error": message}`` with TF Serving's
HTTP status and the key phrases of its messages.

Example:
    >>> from kfacemtl.serving.repository import ModelRepository
    >>> handle(ModelRepository("saved_models"), "GET", "/v1/models", b"")
    (400, {'error': 'Missing model name in request.'})
    >>> handle(ModelRepository("saved_models"), "POST", "/v1/models/faces/versions/one:predict", b"{}")
    (400, {'error': 'Malformed request: POST /v1/models/faces/versions/one:predict'})
"""
from __future__ import annotations

import base64
import binascii
import json
import re

import grpc
import numpy as np
from google.protobuf import json_format
from tensorflow.core.framework import types_pb2

from kfacemtl.serving.repository import DEFAULT_SIGNATURE, ModelRepository, ServingStatus, invalid

_PREDICT = re.compile(r"(?i)/v1/models/([^/:]+)(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?:(classify|regress|predict)")
_STATUS = re.compile(r"(?i)/v1/models(?:/([^/:]+))?(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?(?:/(metadata))?")
_INT64_MAX = 2 ** 63 - 1


def handle(repo: ModelRepository, method: str, path: str, body: bytes) -> tuple[int, dict]:
    """One REST request → ``(HTTP status, JSON body)``.

    Example:
        >>> handle(ModelRepository("saved_models"), "GET", "/v1/models/faces", b"")
        (404, {'error': 'Could not find any versions of model faces'})
    """
    if not re.fullmatch(r"(?i)/v1/.*", path):
        return 404, {"error": f"Not found: {path}"}  # TF Serving's HTTP server has no handler there
    try:
        return 200, _route(repo, method, path, body)
    except ServingStatus as e:
        return e.http_status, {"error": e.message}


def _route(repo, method, path, body) -> dict:
    m = (_PREDICT if method == "POST" else _STATUS if method == "GET" else None)
    m = m.fullmatch(path) if m else None
    if m is None:
        raise invalid(f"Malformed request: {method} {path}")
    name, version, label, verb = m.groups()
    if version is not None:
        if int(version) > _INT64_MAX:
            raise invalid(f"Failed to convert version: {version} to numeric.")
        version = int(version)
    if method == "POST":
        if verb != "predict":
            raise ServingStatus(grpc.StatusCode.UNIMPLEMENTED, f"{verb} is not served here: a predict-only server")
        return _predict(repo, name, version, label, body)
    if not name:
        raise invalid("Missing model name in request.")
    if verb:  # metadata
        return metadata_json(repo, name, version, label)
    return json_format.MessageToDict(repo.status(name, version, label), preserving_proto_field_name=True,
                                     always_print_fields_with_no_presence=True)


def metadata_json(repo: ModelRepository, name: str, version: int | None, label: str | None) -> dict:
    """``GET /v1/models/NAME[/versions/N|/labels/L]/metadata``: the model spec and its signature defs.

    Example:
        >>> try:
        ...     metadata_json(ModelRepository("saved_models"), "faces", None, "stable")
        ... except ServingStatus as e:
        ...     print(e.http_status, e.message)
        400 Unrecognized servable version label: stable
    """
    version, defs = repo.signature_defs(name, version, label)
    signatures = {k: json_format.MessageToDict(v, preserving_proto_field_name=True,
                                               always_print_fields_with_no_presence=True) for k, v in defs.items()}
    return {"model_spec": {"name": name, "signature_name": "", "version": str(version)},
            "metadata": {"signature_def": {"signature_def": signatures}}}


def _predict(repo, name, version, label, body: bytes) -> dict:
    doc = _parse(body)
    signature = doc.get("signature_name", "")
    if not isinstance(signature, str):
        raise invalid(f"JSON Value: {_short(doc)} not formatted correctly. 'signature_name' key must be a string "
                      f"value.")
    version, defs = repo.signature_defs(name, version, label)
    signature = signature or DEFAULT_SIGNATURE
    if signature not in defs:
        raise invalid(f'Serving signature name: "{signature}" not found in signature def')
    wanted = {k: v.dtype for k, v in defs[signature].inputs.items()}
    if "instances" in doc and "inputs" in doc:
        raise invalid(f"JSON Value: {_short(doc)} Not formatted correctly expecting only one of 'inputs' or "
                      f"'instances' keys to exist ")
    if "instances" in doc:
        inputs, rows = _from_instances(doc["instances"], wanted, doc), True
    elif "inputs" in doc:
        inputs, rows = _from_inputs(doc["inputs"], wanted), False
    else:
        raise invalid("Missing 'inputs' or 'instances' key")
    out = repo.run(name, version, signature, inputs)  # resolved and checked above; inputs named by the signature
    return _as_rows(out) if rows else _as_columns(out)


def _parse(body: bytes) -> dict:
    if not body:
        raise invalid("JSON Parse error: The document is empty")
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError) as e:
        raise invalid(f"JSON Parse error: Invalid value. ({e}) at offset: {getattr(e, 'pos', 0)}") from None
    if not isinstance(doc, dict):
        raise invalid(f"JSON Value: {_short(doc)} Is not object")
    return doc


def _short(value, limit: int = 200) -> str:
    text = json.dumps(value)
    return text if len(text) <= limit else text[:limit] + "..."


def _is_b64(value) -> bool:
    return isinstance(value, dict) and len(value) == 1 and isinstance(value.get("b64"), str)


def _from_instances(instances, wanted: dict, doc) -> dict:
    """Row form: one entry per example, a value (one input) or ``{alias: value}``."""
    if not isinstance(instances, list):
        raise invalid(f"JSON Value: {_short(doc)} Excepting 'instances' to be an list/array")
    if not instances:
        raise invalid(f"JSON Value: {_short(doc)} No values in 'instances' array")
    named = isinstance(instances[0], dict) and not _is_b64(instances[0])
    if not named and len(wanted) > 1:
        raise invalid("instances is a plain list, but expecting list of objects as multiple input tensors required "
                      "as per tensorinfo_map")
    columns = {k: [] for k in wanted}
    for i, item in enumerate(instances):
        if named != (isinstance(item, dict) and not _is_b64(item)):
            raise invalid(f"Expecting {'object' if named else 'value/list'} but got "
                          f"{'list' if named else 'object'} at item {i} of input list")
        values = item if named else {next(iter(wanted)): item}
        if set(values) != set(wanted):
            raise invalid(f"Failed to process element: {i} of 'instances' list. JSON object: {_short(item)} must "
                          f"only have keys: {','.join(sorted(wanted))}")
        for alias, value in values.items():
            try:
                tensor = _tensor(value, wanted[alias])
            except ServingStatus as e:
                raise invalid(f"Failed to process element: {i} of 'instances' list. Error: INVALID_ARGUMENT: "
                              f"{e.message}") from None
            if columns[alias] and columns[alias][0].shape != tensor.shape:
                raise invalid(f"Expecting shape {list(columns[alias][0].shape)} but got: {list(tensor.shape)}")
            columns[alias].append(tensor)
    return {k: np.stack(v) for k, v in columns.items()}


def _from_inputs(inputs, wanted: dict) -> dict:
    """Columnar form: the whole batch of each input, a value (one input) or ``{alias: value}``."""
    if not isinstance(inputs, dict) or _is_b64(inputs):
        if len(wanted) > 1:
            raise invalid("inputs is a plain value/list, but expecting an object as multiple input tensors required "
                          "as per tensorinfo_map")
        alias = next(iter(wanted))
        return {alias: _tensor(inputs, wanted[alias])}
    missing = [k for k in wanted if k not in inputs]
    if missing:
        raise invalid(f"Missing named input: {missing[0]} in 'inputs' object.")
    return {k: _tensor(inputs[k], dtype) for k, dtype in wanted.items()}


_TYPE_NAMES = {types_pb2.DT_FLOAT: "float", types_pb2.DT_DOUBLE: "double", types_pb2.DT_STRING: "string",
               types_pb2.DT_INT32: "int32", types_pb2.DT_INT64: "int64", types_pb2.DT_BOOL: "bool",
               types_pb2.DT_UINT8: "uint8"}
_NUMPY = {types_pb2.DT_FLOAT: np.float32, types_pb2.DT_DOUBLE: np.float64, types_pb2.DT_INT32: np.int32,
          types_pb2.DT_INT64: np.int64, types_pb2.DT_BOOL: np.bool_, types_pb2.DT_UINT8: np.uint8,
          types_pb2.DT_STRING: object}


def _json_type(value) -> str:
    return {bool: "True" if value else "False", dict: "Object", list: "Array", str: "String",
            type(None): "Null"}.get(type(value), "Number")


def _leaf(value, dtype):
    def type_error():
        return invalid(f"JSON Value: {_short(value)} Type: {_json_type(value)} is not of expected type: "
                       f"{_TYPE_NAMES.get(dtype, types_pb2.DataType.Name(dtype))}")

    if isinstance(value, dict):
        if dtype != types_pb2.DT_STRING:
            raise type_error()
        if not _is_b64(value):
            raise invalid(f"JSON Value: {_short(value)} not formatted correctly for base64 data")
        try:
            return base64.b64decode(value["b64"], validate=True)
        except (binascii.Error, ValueError):
            raise invalid("Unable to base64 decode") from None
    if dtype == types_pb2.DT_STRING:
        if not isinstance(value, str):
            raise type_error()
        return value.encode()
    if dtype == types_pb2.DT_BOOL:
        if not isinstance(value, bool):
            raise type_error()
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise type_error()
    if dtype not in (types_pb2.DT_FLOAT, types_pb2.DT_DOUBLE) and not isinstance(value, int):
        raise type_error()
    return value


def _tensor(value, dtype) -> np.ndarray:
    """A JSON value → an array of the signature input's dtype, dense: every list at one level the same length
    and the values at the deepest level (TF Serving's ``FillTensorProto``)."""
    shape, v = [], value
    while isinstance(v, list):
        shape.append(len(v))
        if not v:
            break
        v = v[0]
    flat = []

    def fill(v, level):
        if not isinstance(v, list):
            if level != len(shape):
                raise invalid(f"JSON Value: {_short(v)} found at incorrect level: {level + 1} in the JSON DOM. "
                              f"Expected at level: {len(shape)}")
            flat.append(_leaf(v, dtype))
            return
        if level >= len(shape):
            raise invalid(f"Encountered list at unexpected level: {level} expected < {len(shape)}")
        if len(v) != shape[level]:
            raise invalid(f"Encountered list at unexpected size: {len(v)} at level: {level} expected size: "
                          f"{shape[level]}")
        for x in v:
            fill(x, level + 1)

    fill(value, 0)
    array = np.empty(len(flat), dtype=_NUMPY.get(dtype, object))
    array[:] = flat
    return array.reshape(shape)


def _json_values(name: str, array: np.ndarray):
    """An output as JSON: strings as text (bytes as ``{"b64": ...}`` when the output's name ends in ``_bytes``)."""
    if array.dtype == object:
        if name.endswith("_bytes"):
            return np.vectorize(lambda b: {"b64": base64.b64encode(b).decode()}, otypes=[object])(array).tolist()
        return np.vectorize(lambda b: b.decode("utf-8", "replace") if isinstance(b, bytes) else b,
                            otypes=[object])(array).tolist()
    return array.tolist()


def _as_rows(out: dict) -> dict:
    """``{"predictions": [...]}``: one entry per example; ``{output: value}`` when there are several outputs."""
    sizes = {name: (np.shape(v)[0] if np.ndim(v) else 0) for name, v in out.items()}
    for name, size in sizes.items():
        if size < 1:
            raise invalid(f"Tensor name: {name} has invalid batch size: {size}")
    if len(set(sizes.values())) > 1:
        raise invalid(f"Output tensors have inconsistent batch sizes: {sizes}")
    values = {name: _json_values(name, v) for name, v in out.items()}
    n = next(iter(sizes.values()))
    if len(values) == 1:
        return {"predictions": next(iter(values.values()))}
    return {"predictions": [{name: v[i] for name, v in values.items()} for i in range(n)]}


def _as_columns(out: dict) -> dict:
    """``{"outputs": ...}``: each output's whole batch; ``{output: values}`` when there are several outputs."""
    values = {name: _json_values(name, v) for name, v in out.items()}
    return {"outputs": next(iter(values.values())) if len(values) == 1 else values}
