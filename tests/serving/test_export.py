import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from google.protobuf import text_format
from tensorflow_serving.apis import prediction_log_pb2
from tensorflow_serving.config import model_server_config_pb2

from helpers import tiny_model
from kfacemtl.serving import export as export_mod
from kfacemtl.serving import ExportError, export_model, output_names
from kfacemtl.data import decode_image


@pytest.fixture(scope="module")
def model():
    return tiny_model(seed=1)


@pytest.fixture(scope="module")
def exported(model, tmp_path_factory):
    base = tmp_path_factory.mktemp("saved_models")
    return export_model(model, base, "faces")


def _images(tmp_path, one_size=None):
    """PNG and JPEG files of several sizes (or all of ``one_size``) and channel layouts."""
    rng = np.random.default_rng(0)
    files = []
    for i, (shape, fmt) in enumerate([((64, 64, 3), "png"), ((97, 80, 3), "jpeg"), ((50, 70, 1), "png"),
                                      ((40, 40, 4), "png"), ((120, 90, 1), "jpeg"), ((33, 61, 2), "png")]):
        shape = (*one_size, shape[2]) if one_size else shape
        arr = rng.integers(0, 256, shape, dtype=np.uint8)
        data = tf.io.encode_png(arr) if fmt == "png" else tf.io.encode_jpeg(arr)
        path = tmp_path / f"img{i}.{fmt}"
        path.write_bytes(data.numpy())
        files.append(path)
    return files


def test_versions_are_numbered_atomic_and_never_overwritten(model, tmp_path):
    assert export_model(model, tmp_path, "faces") == tmp_path / "faces" / "1"
    assert export_model(model, tmp_path, "faces") == tmp_path / "faces" / "2"
    before = (tmp_path / "faces" / "1" / "saved_model.pb").stat().st_mtime_ns
    with pytest.raises(ExportError, match="already exists; exports never overwrite"):
        export_model(model, tmp_path, "faces", version=1)
    assert (tmp_path / "faces" / "1" / "saved_model.pb").stat().st_mtime_ns == before
    assert export_model(model, tmp_path, "faces", version=7).name == "7"
    # models.config is what tensorflow_model_server parses: the real proto, every version, the labels
    config = text_format.Parse((tmp_path / "faces" / "models.config").read_text(),
                               model_server_config_pb2.ModelServerConfig())
    entry = config.model_config_list.config[0]
    assert entry.name == "faces" and entry.base_path == "/models/faces"
    assert list(entry.model_version_policy.specific.versions) == [1, 2, 7]
    assert dict(entry.version_labels) == {"stable": 2, "canary": 7}
    assert "max_batch_size" in (tmp_path / "faces" / "batching_parameters.txt").read_text()
    with pytest.raises(ExportError, match="name versions that do not exist"):
        export_model(model, tmp_path, "faces", labels={"stable": 5})
    with pytest.raises(ExportError, match="model name"):
        export_model(model, tmp_path, "../evil")
    assert sorted(p.name for p in (tmp_path / "faces").iterdir()) == \
        ["1", "2", "7", "batching_parameters.txt", "models.config"]


def test_an_xla_export_answers_as_the_plain_one_and_decodes_on_the_cpu(model, exported, tmp_path):
    xla = export_model(model, tmp_path, "faces", jit_compile=True)
    assert json.loads((xla / "model_card.json").read_text())["xla"] is True
    assert "compiled with XLA" in (xla / "model_card.md").read_text()
    x = np.random.default_rng(1).random((3, 64, 64, 3)).astype("float32")
    data = tf.constant([tf.io.encode_jpeg((x[i] * 255).astype("uint8")).numpy() for i in range(3)])
    plain, compiled = (tf.saved_model.load(str(d)).signatures for d in (exported, xla))
    for sig, arg in (("serving_float", tf.constant(x)), ("serving_default", data)):
        a, b = plain[sig](images=arg), compiled[sig](images=arg)
        assert set(a) == set(b)
        for key in a:
            if a[key].dtype == tf.string:
                assert a[key].numpy().tolist() == b[key].numpy().tolist(), key
            else:
                np.testing.assert_allclose(a[key].numpy(), b[key].numpy(), atol=1e-4, err_msg=key)
    # the decoding's ops are pinned to the CPU (JPEG decoding has no GPU kernel; the batch crosses over once)
    library = plain["serving_default"].graph.as_graph_def().library.function
    nodes = [n for f in library for n in f.node_def]
    graph = plain["serving_default"].graph.as_graph_def().node
    loops = {n.op: n.device for n in [*nodes, *graph] if n.op in ("DatasetToSingleElement", "ParallelMapDatasetV2")}
    # images are decoded in tf.data map functions (which always run on the host), their datasets on the CPU
    assert set(loops) == {"DatasetToSingleElement", "ParallelMapDatasetV2"}
    assert all("CPU" in d for d in loops.values()), loops
    assert any(n.op == "DecodeImage" for n in nodes)
    # and the outputs are made on the host from one copy of the heads' outputs
    assert [n.device for n in nodes if n.op == "SplitV"] and all("CPU" in n.device for n in nodes if n.op == "SplitV")
    # a batch of one size is resized by matrix products left to the device (on a GPU where there is one)
    resize = [n for n in nodes if n.op == "BatchMatMulV2"]
    assert resize and all(n.device == "" for n in resize)


def test_a_tta_export_answers_the_mean_of_each_face_and_its_mirror(model, tmp_path):
    flip = export_model(model, tmp_path, "faces", tta="flip", warmup=False)
    assert json.loads((flip / "model_card.json").read_text())["tta"] == "flip"
    assert "mean over 2 views of the face" in (flip / "model_card.md").read_text()
    x = np.random.default_rng(2).random((3, 64, 64, 3)).astype("float32")
    out = tf.saved_model.load(str(flip)).signatures["serving_float"](images=tf.constant(x))
    plain, mirrored = model(x, training=False), model(x[:, :, ::-1], training=False)
    for task, a, b in zip(model.tasks, plain, mirrored):
        mean = (a.numpy() + b.numpy()) / 2
        if task.kind in ("classification", "multilabel"):
            np.testing.assert_allclose(out[f"{task.name}_probs"].numpy(), mean, atol=1e-5)
            assert not np.allclose(out[f"{task.name}_probs"].numpy(), a.numpy(), atol=1e-5)  # not the plain answer
        else:
            np.testing.assert_allclose(out[task.name].numpy(), mean[:, 0] if task.dim == 1 else mean, atol=1e-4)
    with pytest.raises(ValueError, match="tta"):
        export_model(model, tmp_path, "faces", tta="mirror")
    assert sorted(p.name for p in (tmp_path / "faces").iterdir() if p.name.isdigit()) == ["1"]  # nothing written
    # with XLA the views are made outside the compiled pass (XLA has no CropAndResize kernel): the same answers
    compiled = export_model(model, tmp_path, "faces", tta="flip", jit_compile=True, warmup=False)
    again = tf.saved_model.load(str(compiled)).signatures["serving_float"](images=tf.constant(x))
    for key in out:
        if out[key].dtype != tf.string:
            np.testing.assert_allclose(again[key].numpy(), out[key].numpy(), atol=1e-4, err_msg=key)


# how many times the kill test kills `kfacemtl export` (each a fresh process: about 5 s); 20 for the full check
EXPORT_KILLS = int(__import__("os").environ.get("KFACEMTL_EXPORT_KILLS", "2"))  # one mid-write, one anywhere


def _complete(version_dir: Path) -> bool:
    return all((version_dir / f).is_file() for f in ("saved_model.pb", "variables/variables.index", "model_card.md",
                                                     f"assets.extra/{export_mod.WARMUP_FILE}"))


@pytest.mark.slow
def test_a_killed_export_never_leaves_a_half_written_version_and_the_next_cleans_up(tmp_path):
    import os
    import random
    import signal
    import time
    tiny_model(["gender"]).save(tmp_path / "m.keras")
    base, rng = tmp_path / "models", random.Random(0)
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    command = [sys.executable, "-m", "kfacemtl", "export", str(tmp_path / "m.keras"), "--base", str(base),
               "--name", "faces"]
    start = time.time()
    subprocess.run(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
    whole = time.time() - start  # one export, start to end
    mid_write = 0
    for kill in range(EXPORT_KILLS):
        proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if kill % 2:  # anywhere in its life: importing, tracing, writing, renaming, writing the config
            time.sleep(rng.uniform(0, whole))
        else:  # while the version is written (a short moment: most of an export is tracing)
            deadline = time.time() + 60
            while time.time() < deadline and proc.poll() is None and not list((base / "faces").glob(".tmp-*")):
                time.sleep(0.002)
            time.sleep(0 if kill == 0 else rng.uniform(0, 0.05))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        mid_write += any(not _alive_pid(p) for p in (base / "faces").glob(".tmp-*"))
        versions = export_mod.list_versions(base / "faces")
        assert all(_complete(base / "faces" / str(v)) for v in versions), (kill, versions)  # all or nothing
    print(f"{EXPORT_KILLS} kills, {mid_write} while a version was being written, "
          f"{len(export_mod.list_versions(base / 'faces')) - 1} of them finished first")
    assert mid_write >= 1  # the kills did land in the middle of writing
    final = export_model(tmp_path / "m.keras", base, "faces", warmup=True)
    left = [p.name for p in (base / "faces").iterdir() if p.name.startswith(".")]
    assert left == [] and _complete(final)  # the killed exports' leftovers are gone
    config = text_format.Parse((base / "faces" / "models.config").read_text(), model_server_config_pb2.ModelServerConfig())
    listed = list(config.model_config_list.config[0].model_version_policy.specific.versions)
    assert listed == export_mod.list_versions(base / "faces")  # every finished version is served
    assert "gender_probs" in tf.saved_model.load(str(final)).signatures["serving_float"].structured_outputs


def _alive_pid(path: Path) -> bool:
    """Whether the export that wrote the temporary version folder ``path`` (``.tmp-V-PID-RANDOM``) still runs."""
    return export_mod._alive(int(path.name.split("-")[2]))


def test_leftovers_of_a_live_export_are_left_alone(tmp_path):
    import os
    live = tmp_path / f".tmp-2-{os.getpid()}-0123abcd"
    live.mkdir()
    dead = tmp_path / ".models.tmp999999999.config"
    dead.write_text("half")
    assert export_mod.remove_leftovers(tmp_path) == [dead] and live.exists()


def test_a_crash_mid_export_leaves_no_version(model, tmp_path, monkeypatch):
    def boom(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(export_mod, "_warmup_records", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        export_model(model, tmp_path, "faces")
    assert [p.name for p in (tmp_path / "faces").iterdir()] == []  # no half version, no temp folder
    monkeypatch.undo()
    assert export_model(model, tmp_path, "faces").name == "1"


def test_float_signature_equals_the_keras_model(model, exported):
    sig = tf.saved_model.load(str(exported)).signatures["serving_float"]
    x = np.random.default_rng(0).random((5, 64, 64, 3)).astype("float32")
    out = sig(images=tf.constant(x))
    ref = model(x, training=False)
    for task, r in zip(model.tasks, ref):
        r = r.numpy()
        if task.kind == "classification":
            np.testing.assert_allclose(out[f"{task.name}_probs"].numpy(), r, atol=1e-5)
            assert out[f"{task.name}_label"].numpy().tolist() == r.argmax(-1).tolist()
            assert [c.decode() for c in out[f"{task.name}_class"].numpy()] == [task.classes[i] for i in r.argmax(-1)]
        elif task.kind == "multilabel":
            np.testing.assert_allclose(out[f"{task.name}_probs"].numpy(), r, atol=1e-5)
            active = [",".join(n for n, p in zip(task.classes, row) if p >= 0.5) for row in r]
            assert [a.decode() for a in out[f"{task.name}_active"].numpy()] == active
        else:
            value = out[task.name].numpy()
            np.testing.assert_allclose(value, r[:, 0] if task.dim == 1 else r, atol=1e-4)
        assert set(output_names(task)) <= set(out)


@pytest.mark.parametrize("one_size", [None, (97, 80), (64, 64), (230, 240)],
                         ids=["sizes", "one-size", "model-size", "one-size-large"])
def test_bytes_signature_matches_the_training_preprocessing(model, exported, tmp_path, one_size):
    files = _images(tmp_path, one_size)  # several sizes: each resized alone; one size: resized at once
    sig = tf.saved_model.load(str(exported)).signatures["serving_default"]
    out = sig(images=tf.constant([f.read_bytes() for f in files]))
    decoded = tf.stack([decode_image(f.read_bytes()) for f in files])  # what the training pipeline feeds
    ref = model(decoded, training=False)
    # stated bound: the same TF ops run in both, so outputs agree to float rounding (1e-5)
    for task, r in zip(model.tasks, ref):
        key = task.name if task.kind == "regression" else f"{task.name}_probs"
        got = out[key].numpy()
        want = r.numpy()[:, 0] if task.kind == "regression" and task.dim == 1 else r.numpy()
        np.testing.assert_allclose(got, want, atol=1e-5 * max(1.0, np.abs(want).max()), err_msg=task.name)


_GOOD = tf.io.encode_png(np.zeros((8, 8, 3), np.uint8)).numpy()


_BOMB = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + (20000).to_bytes(4, "big") * 2 + b"\x08\x02\x00\x00\x00"
_JPEG = tf.io.encode_jpeg(np.random.default_rng(3).integers(0, 256, (30, 20, 3), dtype=np.uint8)).numpy()


@pytest.mark.parametrize("bad, message", [
    (b"\xff\xd8\xff\xe0 not really a jpeg", "Invalid JPEG data"),
    (b"", "is empty (0 bytes)"),
    (b"just some text, not an image\n", "is not a JPEG or PNG (bad magic bytes); first bytes: 106 117 115"),
    (_BOMB, "declares 20000 x 20000 pixels"),  # refused before any decoding
    (_GOOD[:20], "is a PNG shorter than its header"),
    (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + (0).to_bytes(4, "big") * 2 + b"\x08\x02\x00\x00\x00",
     "declares an empty image: 0 x 0"),
    (_GOOD[:60], "could not be decoded"),  # a valid header, then the data stops
    (_JPEG[:len(_JPEG) // 2], "could not be decoded"),
])
def test_a_bad_image_is_named_in_its_row_and_its_neighbours_are_answered(exported, bad, message):
    sig = tf.saved_model.load(str(exported)).signatures["serving_default"]
    alone = {k: v.numpy() for k, v in sig(images=tf.constant([_GOOD, _JPEG])).items()}
    out = {k: v.numpy() for k, v in sig(images=tf.constant([_GOOD, bad, _JPEG])).items()}
    errors = [e.decode() for e in out.pop("error")]
    assert errors[0] == errors[2] == "" and message in errors[1], errors
    for name, value in out.items():
        np.testing.assert_allclose(value[[0, 2]], alone[name], atol=1e-6) if value.dtype != object else \
            np.testing.assert_array_equal(value[[0, 2]], alone[name])
        assert not np.any(value[1]), (name, value[1])  # zeros (empty strings) in the bad image's row


def test_an_empty_batch_is_an_error(exported):
    sig = tf.saved_model.load(str(exported)).signatures["serving_default"]
    with pytest.raises(tf.errors.InvalidArgumentError, match="empty batch"):
        sig(images=tf.constant([], dtype=tf.string))


def test_byte_limit_is_checked_before_decoding(model, tmp_path):
    path = export_model(model, tmp_path, "small", max_bytes=500)
    sig = tf.saved_model.load(str(path)).signatures["serving_default"]
    big = tf.io.encode_png(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8))
    error = sig(images=tf.stack([big]))["error"].numpy()[0].decode()
    assert error.startswith("has ") and error.endswith("bytes; the limit is 500")


def test_saved_model_cli_lists_the_signatures(exported):
    cli = Path(sys.executable).parent / "saved_model_cli"
    assert cli.is_file(), "saved_model_cli comes with tensorflow"
    run = subprocess.run([str(cli), "show", "--dir", str(exported), "--all"], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    text = run.stdout
    assert "signature_def['serving_default']" in text and "signature_def['serving_float']" in text
    assert "inputs['images'] tensor_info:\n        dtype: DT_STRING" in text
    for name in ("age", "gender_probs", "expression_class", "action_units_active", "valence_arousal"):
        assert f"outputs['{name}']" in text, name


def test_warmup_requests_are_valid_prediction_logs(exported):
    path = exported / "assets.extra" / export_mod.WARMUP_FILE
    records = list(tf.data.TFRecordDataset(str(path)).as_numpy_iterator())
    assert len(records) == 3  # one image, a batch of one size, two sizes
    sig = tf.saved_model.load(str(exported)).signatures["serving_default"]
    for raw in records:
        log = prediction_log_pb2.PredictionLog.FromString(raw)
        req = log.predict_log.request
        assert req.model_spec.name == "faces" and req.model_spec.signature_name == "serving_default"
        images = tf.make_ndarray(req.inputs["images"])
        assert sig(images=tf.constant(images))["age"].shape == (len(images),)


def test_model_card_from_a_run_directory(tmp_path):
    from kfacemtl.training import train_run
    cfg = {"tasks": ["gender", "expression"], "sources": ["synthetic:lab?n=32", "synthetic:portraits?n=32"],
           "eval_sources": ["synthetic:street?split=test&n=16"],
           "model": {"widths": [8, 16], "depths": [1, 1], "embedding_dim": 16, "head_units": 8},
           "training": {"epochs": 1, "steps_per_epoch": 2, "batch_size": 16}}
    train_run(cfg, tmp_path / "run", verbose=0)
    path = export_model(tmp_path / "run", tmp_path / "sm", "faces")
    card = json.loads((path / "model_card.json").read_text())
    assert [t["name"] for t in card["tasks"]] == ["gender", "expression"]
    assert card["tasks"][1]["classes"][3] == "happy" and "expression_class" in card["tasks"][1]["outputs"]
    assert card["training"]["sources"] == cfg["sources"]
    assert card["evaluation"]["metrics"]["street-test"]["gender"]["n"] == 16
    md = (path / "model_card.md").read_text()
    assert "| expression | classification |" in md and "street-test" in md and "DT_STRING" in md
    with pytest.raises(ExportError, match="without model.keras"):
        export_model(tmp_path, tmp_path / "sm", "faces")


# -- properties (hypothesis) of the bytes signature ------------------------------------------------------------------
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from hypothesis.extra import numpy as hnp  # noqa: E402

PROPERTY = settings(max_examples=25, deadline=None, derandomize=True,  # the same examples on every run (CI)
                     suppress_health_check=[HealthCheck.too_slow,
                                                                           HealthCheck.function_scoped_fixture])
_SIGNATURES = {}


def _serving(exported):
    if exported not in _SIGNATURES:  # loading the SavedModel once for all examples
        _SIGNATURES[exported] = tf.saved_model.load(str(exported)).signatures["serving_default"]
    return _SIGNATURES[exported]


@PROPERTY
@given(image=st.tuples(st.integers(1, 80), st.integers(1, 80), st.sampled_from([1, 2, 3, 4])).flatmap(
    lambda shape: hnp.arrays(np.uint8, shape)), fmt=st.sampled_from(["png", "jpeg"]))
def test_property_any_image_gives_the_outputs_of_the_training_preprocessing(model, exported, image, fmt):
    if fmt == "jpeg" and image.shape[-1] not in (1, 3):
        image = image[..., :1]  # JPEG holds gray or RGB
    data = (tf.io.encode_png(image) if fmt == "png" else tf.io.encode_jpeg(image)).numpy()
    ref = model(decode_image(data)[None], training=False)
    # alone (resized as in training) and twice in a batch (one size: decoded at once, resized by resize_batch)
    for batch in ([data], [data, data]):
        out = _serving(exported)(images=tf.constant(batch))
        for task, r in zip(model.tasks, ref):
            key = task.name if task.kind == "regression" else f"{task.name}_probs"
            want = r.numpy()[:, 0] if task.kind == "regression" and task.dim == 1 else r.numpy()
            for row in out[key].numpy():
                np.testing.assert_allclose(row, want[0], atol=1e-5 * max(1.0, np.abs(want).max()), err_msg=task.name)


@PROPERTY
@given(st.binary(max_size=300), st.sampled_from([b"", b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff"]))
def test_property_garbage_bytes_are_a_clear_error_never_a_crash(exported, tail, head):
    out = _serving(exported)(images=tf.constant([_GOOD, head + tail]))
    errors = [e.decode() for e in out["error"].numpy()]  # valid UTF-8: a client can read it
    assert errors[0] == ""
    if errors[1]:
        assert not np.any(out["age"].numpy()[1])
    else:  # a few random tails after a PNG/JPEG head could be a readable image; then it was answered
        assert np.all(np.isfinite(out["age"].numpy()))


def test_jpeg_sizes_read_from_the_frame_header_agree_with_tf_and_fall_back_to_it():
    from kfacemtl.serving.signatures import check_images, jpeg_frame_sizes
    rng = np.random.default_rng(4)
    jpegs = [tf.io.encode_jpeg(rng.integers(0, 256, (h, w, c), dtype=np.uint8), progressive=bool(i % 2),
                               xmp_metadata="x" * (300 * i), chroma_downsampling=bool(i % 3)).numpy()
             for i, (h, w, c) in enumerate([(1, 1, 1), (37, 300, 3), (250, 9, 1), (64, 64, 3), (480, 640, 3)])]
    found, wh = jpeg_frame_sizes(tf.constant(jpegs), tf.constant([True] * len(jpegs)))
    want = [tf.io.extract_jpeg_shape(j).numpy()[1::-1].tolist() for j in jpegs]
    assert found.numpy().all() and wh.numpy().tolist() == want
    # a fill byte before the first marker (allowed; TF's reader skips it): the walk gives up, TF's reader answers
    filled = jpegs[1][:2] + b"\xff" + jpegs[1][2:]
    assert not jpeg_frame_sizes(tf.constant([filled]), tf.constant([True]))[0].numpy()[0]
    error, wh = check_images(tf.constant([filled, jpegs[3]]))
    assert error.numpy().tolist() == [b"", b""] and wh.numpy().tolist() == [want[1], want[3]]
