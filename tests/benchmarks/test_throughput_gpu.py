"""``python -m benchmarks.throughput_gpu`` runs end to end on small data (tiny models, few steps)."""
import json

import numpy as np
import pytest
import yaml

from helpers import ROOT, TINY_MODEL


@pytest.mark.e2e
def test_gpu_throughput_exports_plain_keras_networks_and_times_them(tmp_path, capsys):
    import keras
    from benchmarks import throughput_gpu as bench
    from kfacemtl.models import build_model
    from kfacemtl.tasks import resolve_tasks
    cfg = yaml.safe_load((ROOT / "configs" / "real_utk_fer.yaml").read_text())
    cfg["model"].update(TINY_MODEL)
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    arch = tmp_path / "arch.json"
    assert bench.main(["export", "--config", str(tmp_path / "tiny.yaml"), "--out", str(arch),
                       "--variant", 'narrow={"widths": [4, 8]}']) == 0
    nets = json.loads(arch.read_text())["networks"]
    assert list(nets) == ["default", "narrow"] and nets["narrow"]["forward_flops"] < nets["default"]["forward_flops"]
    assert nets["default"]["outputs"] == {"age": {"kind": "regression", "units": 1},
                                          "gender": {"kind": "classification", "units": 2},
                                          "race": {"kind": "classification", "units": 5},
                                          "expression": {"kind": "classification", "units": 8}}
    # the plain Keras network is kfacemtl's: same weights, same class probabilities
    model = build_model(resolve_tasks(cfg["tasks"]), **cfg["model"])
    plain = keras.models.model_from_json(json.dumps(nets["default"]["model"]))
    assert type(plain).__name__ == "Functional" and plain.count_params() == nets["default"]["parameters"]
    plain.set_weights(model.get_weights())
    x = np.random.default_rng(0).random((3, 24, 24, 3), dtype=np.float32)
    ours, theirs = model.predict_dict(x, verbose=0), dict(zip(plain.output_names, plain.predict(x, verbose=0)))
    for task in ("gender", "race", "expression"):
        np.testing.assert_allclose(theirs[task], ours[task], atol=1e-5)
    half = bench.with_precision(nets["default"], "mixed_float16")
    policies = {layer["name"]: layer["config"]["dtype"]["config"]["name"] for layer in half["config"]["layers"]
                if isinstance(layer["config"].get("dtype"), dict)}
    assert policies["block1_conv1"] == "mixed_float16" and policies["age"] == "float32"  # float32 outputs and losses
    assert bench.main(["run", str(arch), "--batches", "8", "--precisions", "float32,mixed_float16", "--images", "16",
                       "--repeats", "1", "--matmul-size", "64", "--out", str(tmp_path / "gpu")]) == 0
    assert "vs default float32" in capsys.readouterr().out
    r = json.loads((tmp_path / "gpu" / "results.json").read_text())
    assert [(row["network"], row["precision"]) for row in r["rows"]] == [
        ("default", "float32"), ("default", "mixed_float16"), ("narrow", "float32"), ("narrow", "mixed_float16")]
    assert all(row["train_images_per_s"] > 0 and row["inference_images_per_s"] > 0 and row["mfu"] > 0
               for row in r["rows"])
    assert r["backend"] == "tensorflow" and set(r["matmul_peak_flops_per_s"]) == {"float32", "mixed_float16"}
