import json
import os
import subprocess
import sys

import pytest

from kfacemtl.cli import main

CONFIG = """
tasks: [gender, expression]
sources: ["synthetic:lab?n=64", "synthetic:portraits?n=64"]
eval_sources: ["synthetic:webcam?split=test&n=32"]
model: {widths: [8, 16], depths: [1, 1], embedding_dim: 16, head_units: 8}
training: {epochs: 1, steps_per_epoch: 2, batch_size: 16}
"""


def test_train_then_evaluate_writes_the_json_shape(tmp_path, capsys):
    # --strategy overrides the config's (devices go with mirrored); on this machine mirrored has one replica
    (tmp_path / "c.yaml").write_text(CONFIG.replace("batch_size: 16}", "batch_size: 16, strategy: mirrored, "
                                                                       "strategy_devices: ['/cpu:0']}"))
    assert main(["train", str(tmp_path / "c.yaml"), "--out", str(tmp_path / "run"), "--strategy", "default"]) == 0
    saved = (tmp_path / "run" / "config.yaml").read_text()
    assert "strategy: default" in saved and "strategy_devices: null" in saved
    assert main(["evaluate", str(tmp_path / "run" / "model.keras"), "--source", "synthetic:street?split=test&n=16",
                 "--source", "synthetic:lab?split=test&n=8", "--json", str(tmp_path / "e.json")]) == 0
    out = capsys.readouterr().out
    assert "street-test" in out and "gender acc" in out
    data = json.loads((tmp_path / "e.json").read_text())
    assert set(data) == {"street-test", "lab-test"}
    assert data["street-test"]["gender"]["n"] == 16 and 0 <= data["street-test"]["expression"]["accuracy"] <= 1
    assert "macro_f1" in data["lab-test"]["expression"]
    capsys.readouterr()
    assert main(["evaluate", str(tmp_path / "run")]) == 0  # a run directory: its config's eval_sources
    evaluated = capsys.readouterr().out
    assert "webcam-test" in evaluated and "street-test" not in evaluated
    assert main(["evaluate", str(tmp_path / "run"), "--tta", "flip", "--json", str(tmp_path / "f.json")]) == 0
    flipped = json.loads((tmp_path / "f.json").read_text())["webcam-test"]
    assert "webcam-test" in capsys.readouterr().out and 0 <= flipped["gender"]["accuracy"] <= 1
    assert main(["evaluate", str(tmp_path / "run" / "model.keras")]) == 2  # a bare model file names no test sets
    assert "no --source given" in capsys.readouterr().err


def test_errors_exit_2_with_the_key_named(tmp_path, capsys):
    (tmp_path / "c.yaml").write_text(CONFIG.replace("epochs:", "epocs:"))
    assert main(["train", str(tmp_path / "c.yaml"), "--out", str(tmp_path / "run")]) == 2
    assert "'training.epocs': unknown key; did you mean 'epochs'" in capsys.readouterr().err
    assert main(["evaluate", str(tmp_path / "nope.keras"), "--source", "synthetic:lab"]) == 2
    assert "does not exist" in capsys.readouterr().err


@pytest.mark.slow
def test_console_entry_point_help():
    run = subprocess.run([sys.executable, "-m", "kfacemtl", "demo", "--help"], capture_output=True, text=True)
    assert run.returncode == 0 and "--out" in run.stdout


def test_export_then_predict_locally_and_through_a_server(tmp_path, capsys):
    import tensorflow as tf

    from kfacemtl.serving.local_server import LocalModelServer
    # --strategy overrides the config's (devices go with mirrored); on this machine mirrored has one replica
    (tmp_path / "c.yaml").write_text(CONFIG.replace("batch_size: 16}", "batch_size: 16, strategy: mirrored, "
                                                                       "strategy_devices: ['/cpu:0']}"))
    assert main(["train", str(tmp_path / "c.yaml"), "--out", str(tmp_path / "run"), "--strategy", "default"]) == 0
    saved = (tmp_path / "run" / "config.yaml").read_text()
    assert "strategy: default" in saved and "strategy_devices: null" in saved
    base = tmp_path / "saved_models"
    assert main(["export", str(tmp_path / "run"), "--base", str(base), "--name", "faces"]) == 0
    assert main(["export", str(tmp_path / "run" / "model.keras"), "--base", str(base), "--name", "faces",
                 "--version", "5", "--label", "stable=5", "--jit-compile", "--tta", "flip"]) == 0
    card5, card1 = (json.loads((base / "faces" / v / "model_card.json").read_text()) for v in ("5", "1"))
    assert (card5["xla"], card5["tta"], card1["xla"], card1["tta"]) == (True, "flip", False, "none")
    assert "exported" in capsys.readouterr().out and sorted(p.name for p in base.joinpath("faces").glob("[0-9]*")) \
        == ["1", "5"]
    assert main(["export", str(tmp_path / "run"), "--base", str(base), "--name", "faces", "--version", "5"]) == 2
    assert "already exists" in capsys.readouterr().err
    img = tmp_path / "face.png"
    img.write_bytes(tf.io.encode_png(tf.zeros((50, 40, 3), tf.uint8)).numpy())
    assert main(["predict", "--saved-model", str(base / "faces" / "1"), str(img), "--json", str(tmp_path / "p.json")]) == 0
    local = json.loads((tmp_path / "p.json").read_text())
    assert local[0]["image"] == str(img) and local[0]["expression"]["class"] and "gender" in local[0]
    with LocalModelServer(base) as srv:
        assert main(["predict", "--server", srv.grpc_target, "--model", "faces", "--version", "1", str(img)]) == 0
        out = capsys.readouterr().out
        assert "face.png" in out and local[0]["expression"]["class"] in out
        assert main(["predict", "--server", srv.rest_target, "--rest", "--model", "faces", "--label", "stable",
                     str(img), str(tmp_path / "c.yaml")]) == 2
        assert "c.yaml: is not a JPEG or PNG" in capsys.readouterr().err
    assert main(["predict", str(img)]) == 2
    assert "either --server" in capsys.readouterr().err


def test_explain_writes_pngs_and_names_bad_heads(tmp_path, capsys):
    import numpy as np

    from helpers import write_png
    # --strategy overrides the config's (devices go with mirrored); on this machine mirrored has one replica
    (tmp_path / "c.yaml").write_text(CONFIG.replace("batch_size: 16}", "batch_size: 16, strategy: mirrored, "
                                                                       "strategy_devices: ['/cpu:0']}"))
    assert main(["train", str(tmp_path / "c.yaml"), "--out", str(tmp_path / "run"), "--strategy", "default"]) == 0
    saved = (tmp_path / "run" / "config.yaml").read_text()
    assert "strategy: default" in saved and "strategy_devices: null" in saved
    imgs = [str(write_png(tmp_path / f"f{i}.png", np.full((40, 50, 3), 60 * i, "uint8"))) for i in range(2)]
    assert main(["explain", str(tmp_path / "run"), *imgs, "--head", "expression", "--class", "happy",
                 "--method", "all", "--out", str(tmp_path / "sal")]) == 0
    assert "grid_expression.png" in capsys.readouterr().out
    assert (tmp_path / "sal" / "f1_expression_scorecam_overlay.png").is_file()
    assert main(["explain", str(tmp_path / "run"), *imgs, "--head", "age", "--out", str(tmp_path / "sal")]) == 2
    assert "--head: unknown head 'age'; the model's heads are ['expression', 'gender']" in capsys.readouterr().err


def test_the_command_line_starts_quietly_unless_asked(tmp_path):
    # TensorFlow's C++ start-up lines (absl, CUDA probing, oneDNN) are held back; --verbose lets them through
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    run = subprocess.run([sys.executable, "-m", "kfacemtl", "evaluate", str(tmp_path / "none.keras"), "--source",
                          "synthetic:lab"], capture_output=True, text=True, timeout=300, env=env)
    assert run.returncode == 2
    assert run.stderr.strip().splitlines() == [f"kfacemtl evaluate: error: model file '{tmp_path / 'none.keras'}' does "
                                               "not exist; pass a run directory or a .keras file"]
    assert main(["evaluate", str(tmp_path / "none.keras"), "--source", "synthetic:lab", "--verbose"]) == 2
