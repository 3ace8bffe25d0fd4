"""LiteRT export: the float signature as .tflite files (float32, float16, int8), run with the LiteRT interpreter."""
import json

import numpy as np
import pytest

from helpers import tiny_model
from kfacemtl.analysis.evaluation import evaluate_sources
from kfacemtl.data import make_source
from kfacemtl.serving.export import ExportError
from kfacemtl.serving.litert import LiteRTPredictor, export_litert


@pytest.fixture(scope="module")
def model():
    return tiny_model(seed=3)


@pytest.fixture(scope="module")
def exported(model, tmp_path_factory):
    rng = np.random.default_rng(0)
    representative = rng.random((32, *model.input_shape[1:]), dtype=np.float32)
    return export_litert(model, tmp_path_factory.mktemp("litert"), "faces", representative=representative)


def test_each_variant_is_written_with_a_model_card_and_int8_is_the_smallest(exported):
    card = json.loads((exported / "model_card.json").read_text())
    sizes = {v: (exported / s["file"]).stat().st_size for v, s in card["variants"].items()}
    assert set(sizes) == {"float32", "float16", "int8"} and sizes == {v: s["bytes"] for v, s in card["variants"].items()}
    assert sizes["int8"] < 0.4 * sizes["float32"] and sizes["float16"] < 0.65 * sizes["float32"], sizes
    assert card["format"] == "litert" and "gender_probs" in card["outputs"] and "gender_class" not in card["outputs"]
    assert [t["name"] for t in card["tasks"]] == ["age", "gender", "race", "expression", "action_units",
                                                  "valence_arousal"]


@pytest.mark.parametrize("variant, atol", [("float32", 1e-5), ("float16", 2e-3), ("int8", None)])
def test_parity_with_the_keras_model(model, exported, variant, atol):
    x = np.random.default_rng(1).random((10, *model.input_shape[1:]), dtype=np.float32)
    want = model.predict(x, verbose=0)
    got = LiteRTPredictor(exported / f"model_{variant}.tflite", batch_size=4).predict(x)  # 3 batches
    for task, w, g in zip(model.tasks, want, got):
        assert g.shape == w.shape, task.name
        if atol is not None:
            scale = max(1.0, float(np.abs(w).max()))
            np.testing.assert_allclose(g, w, atol=atol * scale, err_msg=f"{variant} {task.name}")
        else:  # int8: close, not equal; the probabilities are still probabilities
            assert np.all(np.isfinite(g)), task.name
            if task.kind == "classification":
                np.testing.assert_allclose(g.sum(axis=1), 1.0, atol=0.02)
                assert np.abs(g - w).max() < 0.15, task.name


def test_a_variant_is_scored_as_the_keras_model_is(model, exported):
    source = make_source("synthetic:portraits?split=test&n=24")
    keras_scores = evaluate_sources(model, [source], image_size=model.input_shape[1:3])
    lite = LiteRTPredictor(exported / "model_float32.tflite")
    lite_scores = evaluate_sources(lite, [source], tasks=lite.tasks, image_size=model.input_shape[1:3])
    for task, metrics in keras_scores["portraits-test"].items():
        for metric, value in metrics.items():
            if metric != "confusion":
                assert lite_scores["portraits-test"][task][metric] == pytest.approx(value, abs=1e-4), (task, metric)


def test_versions_are_never_overwritten_and_bad_requests_are_clear(model, tmp_path):
    first = export_litert(model, tmp_path, "faces", variants=("float32",))
    second = export_litert(model, tmp_path, "faces", variants=("float32",))
    assert (first.name, second.name) == ("1", "2")
    with pytest.raises(ExportError, match="already exists"):
        export_litert(model, tmp_path, "faces", version=1, variants=("float32",))
    with pytest.raises(ExportError, match="choose from"):
        export_litert(model, tmp_path, "faces", variants=("int4",))
    with pytest.raises(ExportError, match="representative images"):
        export_litert(model, tmp_path, "faces", variants=("int8",))
    assert sorted(p.name for p in (tmp_path / "faces").iterdir()) == ["1", "2"]  # nothing half-written left


def test_cli_exports_litert_from_a_model_file(model, tmp_path, capsys):
    from kfacemtl.cli import main
    path = tmp_path / "model.keras"
    model.save(path)
    main(["export", str(path), "--name", "faces", "--format", "litert", "--variants", "float16",
          "--base", str(tmp_path / "lite")])
    out = capsys.readouterr().out
    assert "float16:" in out and (tmp_path / "lite" / "faces" / "1" / "model_float16.tflite").is_file()
    assert main(["export", str(path), "--name", "faces", "--format", "litert", "--tta", "flip",
                 "--base", str(tmp_path / "lite")]) == 2
    assert "--tta: LiteRT files hold the plain float signature" in capsys.readouterr().err
    assert sorted(p.name for p in (tmp_path / "lite" / "faces").iterdir()) == ["1"]  # nothing written
