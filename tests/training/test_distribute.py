"""Strategies (default, mirrored over two logical CPUs, two workers on 127.0.0.1), mixed precision, XLA.

The mirrored and multi-worker checks run in child processes: splitting the CPU into logical devices, and a
worker's gRPC server, must be set up before TensorFlow starts, which it has in the test process.
"""

import json
import os
import socket
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from kfacemtl.training.distribute import is_chief, make_strategy, tf_config, worker_dir
from kfacemtl.errors import ConfigError

from helpers import ROOT
TINY_CONFIG = {
    "tasks": ["gender", "expression", "action_units"],
    "sources": ["synthetic:lab?n=256", "synthetic:portraits?n=256"],  # lab: no gender; portraits: no expression, AUs
    "eval_sources": ["synthetic:lab?split=test&n=64"],
    "model": {"input_shape": [32, 32, 3], "widths": [8, 16], "depths": [1, 1], "embedding_dim": 16, "head_units": 8,
              "dropout": 0.0},
    "training": {"epochs": 2, "steps_per_epoch": 4, "batch_size": 32, "augment": False},
}


def run_child(code: str, env=None, timeout=300) -> dict:
    """Run ``code`` in a fresh Python; it prints one JSON line last, which is returned."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=str(ROOT), **(env or {}))
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=timeout, env=env, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_strategy_settings_errors_and_roles(monkeypatch, tmp_path):
    strategy = make_strategy("default")
    assert strategy.num_replicas_in_sync == 1 and is_chief(strategy) and worker_dir(tmp_path, strategy) == tmp_path
    with pytest.raises(ValueError, match="^name: expected one of"):
        make_strategy("horovod")
    with pytest.raises(ValueError, match="^devices: only the mirrored"):
        make_strategy("default", ["/cpu:0"])
    with pytest.raises(ValueError, match=r"^devices: \['/gpu:7'\]: not devices of this machine"):
        make_strategy("mirrored", ["/cpu:0", "/gpu:7"])
    monkeypatch.setenv("TF_CONFIG", "{cluster: 1}")
    with pytest.raises(ConfigError, match="TF_CONFIG.*not valid JSON"):
        make_strategy("multi_worker")
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": {"worker": ["a:1", "b:2"]}, "task": {"type": "worker",
                                                                                                "index": 2}}))
    with pytest.raises(ConfigError, match="TF_CONFIG.task"):
        tf_config()
    from kfacemtl.training.config import resolve_config
    with pytest.raises(ConfigError, match="training.strategy_devices"):
        resolve_config(dict(TINY_CONFIG, training={"strategy_devices": ["/cpu:0"]}))  # without strategy: mirrored


MIRRORED = """
    import json, tempfile
    from kfacemtl.training.distribute import make_strategy, split_cpu, synchronize_batch_norm
    devices = split_cpu(2)
    import keras, numpy as np, tensorflow as tf
    tf.config.experimental.enable_op_determinism()
    from kfacemtl.models import build_model, load_model
    from kfacemtl.data import make_dataset
    from kfacemtl.data import make_source
    from kfacemtl.tasks import resolve_tasks
    from kfacemtl.training import compile_model, train_run
    cfg = json.loads('''%s''')
    cfg["eval_sources"] = []  # the runs' losses are compared below, not their test sets
    tasks, sources = resolve_tasks(cfg["tasks"]), [make_source(s) for s in cfg["sources"]]
    strategies = {"default": make_strategy("default"), "mirrored": make_strategy("mirrored", devices)}
    out, root = {"step": {}}, tempfile.mkdtemp()
    # one training step from the same weights on the same batch (labels of each task on some rows only)
    batch = next(iter(make_dataset(sources, tasks, batch_size=32, image_size=(32, 32), augment=False)))
    for weighting in ("equal", "uncertainty"):
        after = {}
        for name, strategy in strategies.items():
            keras.utils.set_random_seed(0)
            with strategy.scope():
                model = compile_model(build_model(tasks, **cfg["model"]), "sgd", 0.1, weighting=weighting)
            synchronize_batch_norm(model)
            model.fit(tf.data.Dataset.from_tensors(batch).repeat(), steps_per_epoch=1, verbose=0)
            after[name] = model.get_weights()
        out["step"][weighting] = max(float(np.abs(a - b).max()) for a, b in zip(after["default"], after["mirrored"]))
    # whole runs, then the same weights evaluated on one device and on two
    for name, extra in [("default", {}), ("mirrored", {"strategy": "mirrored", "strategy_devices": devices})]:
        c = json.loads(json.dumps(cfg)); c["training"].update(extra, weighting="uncertainty")
        out[name] = train_run(c, f"{root}/{name}", verbose=0)["final_epoch_metrics"]
    ds = make_dataset(sources, tasks, batch_size=32, image_size=(32, 32), training=False)
    for name, strategy in strategies.items():
        with strategy.scope():
            model = compile_model(load_model(f"{root}/default/model.keras"))
        out["eval_" + name] = model.evaluate(ds, verbose=0, return_dict=True)
    # a finished mirrored run asked for one epoch more continues on two devices
    c = json.loads(json.dumps(cfg)); c["training"].update(strategy="mirrored", strategy_devices=devices, epochs=3,
                                                          weighting="uncertainty")
    train_run(c, f"{root}/mirrored", resume=True, verbose=0)
    out["epochs_after_resume"] = len(open(f"{root}/mirrored/history.csv").read().strip().splitlines()) - 1
    # augmentation in the step (each replica its own draws), on two devices
    c = json.loads(json.dumps(cfg)); c["training"].update(strategy="mirrored", strategy_devices=devices,
                                                          augment=True, augment_on="step")
    report = train_run(c, f"{root}/augmented", verbose=0)
    out["augmented_in"], out["augmented_loss"] = report["augmented_in"], report["final_epoch_metrics"]["loss"]
    print(json.dumps(out))
"""


@pytest.mark.slow
def test_mirrored_over_two_cpu_devices_matches_one_device():
    out = run_child(MIRRORED % json.dumps(TINY_CONFIG))
    # the same step: masked means over the global batch, batch norm over the global batch, summed gradients
    assert out["step"]["equal"] < 1e-5 and out["step"]["uncertainty"] < 1e-5, out["step"]
    one, two = out["eval_default"], out["eval_mirrored"]
    assert set(one) == set(two) and len(one) >= 7
    for key in one:  # the same weights: the same masked losses and metrics, to float rounding
        assert two[key] == pytest.approx(one[key], rel=1e-4, abs=1e-5), key
    # Whole runs: float rounding differs (sums in another order) and Adam's steps amplify it, so the runs
    # part a little. Stated tolerance: the total loss within 5 % (a wrong loss scale would double it),
    # task weights within 0.05, every log present.
    one, two = out["default"], out["mirrored"]
    assert set(one) == set(two)
    assert two["loss"] == pytest.approx(one["loss"], rel=0.05)
    for key in one:
        if key.startswith("weight_"):
            assert two[key] == pytest.approx(one[key], abs=0.05), key
    assert out["epochs_after_resume"] == 3
    assert out["augmented_in"] == "step" and np.isfinite(out["augmented_loss"])


WORKER = """
    import json, os
    from kfacemtl.training import train_run
    cfg = json.loads('''%s''')
    cfg["training"].update(strategy="multi_worker", weighting="dwa", augment=True)  # the pipeline's XLA augmentation
    report = train_run(cfg, os.environ["RUN_DIR"], verbose=0)
    # keras-team/keras#20585: does Keras's own fit still fail under this strategy? (MultiTaskSteps works around it)
    import keras, numpy as np, tensorflow as tf
    from kfacemtl.training.distribute import make_strategy
    with make_strategy("multi_worker").scope():
        plain = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
        plain.compile("sgd", "mse")
    try:
        plain.fit(tf.data.Dataset.from_tensors((np.zeros((8, 4), "float32"), np.zeros((8, 1), "float32"))).repeat(),
                  steps_per_epoch=1, verbose=0)
        keras_bug = None
    except Exception as e:  # the bug's error, whatever its type
        keras_bug = f"{type(e).__name__}: {str(e)[:300]}"
    print(json.dumps({"metrics": report["final_epoch_metrics"], "table": report["table"], "keras_bug": keras_bug}))
"""


def _free_ports(n):
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


@pytest.mark.slow
def test_two_workers_on_localhost_train_one_model_and_only_the_chief_writes_the_run(tmp_path):
    from concurrent.futures import ThreadPoolExecutor
    hosts = [f"127.0.0.1:{p}" for p in _free_ports(2)]
    run_dir, scratch_root = tmp_path / "run", tmp_path / "tmp"
    scratch_root.mkdir()

    def worker(i):
        tf_cfg = json.dumps({"cluster": {"worker": hosts}, "task": {"type": "worker", "index": i}})
        return run_child(WORKER % json.dumps(TINY_CONFIG), timeout=400,
                         env={"TF_CONFIG": tf_cfg, "RUN_DIR": str(run_dir), "TMPDIR": str(scratch_root)})
    with ThreadPoolExecutor(2) as pool:
        chief, other = pool.map(worker, range(2))
    assert chief["metrics"] == other["metrics"] and chief["table"] == other["table"]  # one model, in sync
    # This test fails once Keras fixes keras-team/keras#20585: then remove MultiTaskSteps._maybe_symbolic_build and
    # MultiTaskSteps._synced (their workaround) and this assertion.
    assert chief["keras_bug"] is not None, "Keras's own fit now works under MultiWorkerMirroredStrategy"
    assert "PerReplica" in chief["keras_bug"], chief["keras_bug"]  # the bug's own error, not another one
    assert (run_dir / "model.keras").is_file() and (run_dir / "report.json").is_file()
    rows = (run_dir / "history.csv").read_text().strip().splitlines()
    assert len(rows) == 1 + TINY_CONFIG["training"]["epochs"]
    [scratch] = scratch_root.glob("kfacemtl-worker1-*")  # the other worker wrote only its own scratch folder
    from kfacemtl.models import load_model
    a, b = load_model(run_dir / "model.keras"), load_model(scratch / "model.keras")
    for wa, wb in zip(a.get_weights(), b.get_weights()):
        np.testing.assert_allclose(wa, wb, rtol=1e-6, atol=1e-6)


def test_mixed_precision_and_xla_options_train_with_float32_outputs_and_loss_scaling(tmp_path):
    import keras

    from kfacemtl.models import load_model
    from kfacemtl.training import compile_model, train_run
    cfg = json.loads(json.dumps(TINY_CONFIG))
    cfg["model"]["mixed_precision"] = True
    cfg["training"].update(epochs=1, steps_per_epoch=3, jit_compile=True, weighting="uncertainty")
    report = train_run(cfg, tmp_path / "run", verbose=0)
    assert all(np.isfinite(v) for v in report["final_epoch_metrics"].values())
    model = load_model(tmp_path / "run" / "model.keras")
    conv = model.backbone.get_layer("block1_conv1")
    assert conv.dtype_policy.name == "mixed_float16" and conv.kernel.dtype == "float32"  # float16 math, float32 weights
    assert model.get_layer("embedding").compute_dtype == "float16"
    outputs = model(np.zeros((2, 32, 32, 3), "float32"))
    assert [keras.backend.standardize_dtype(o.dtype) for o in outputs] == ["float32"] * 3  # so losses in float32
    assert isinstance(compile_model(model).optimizer, keras.optimizers.LossScaleOptimizer)
    assert "jit_compile: true" in (tmp_path / "run" / "config.yaml").read_text()
    plain = compile_model(load_model(tmp_path / "run" / "model.keras"), jit_compile=True)
    assert plain.jit_compile is True
