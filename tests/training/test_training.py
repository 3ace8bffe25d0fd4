import json

import keras
import numpy as np
import pytest
import yaml

from kfacemtl.training.config import resolve_config
from kfacemtl.errors import ConfigError
from kfacemtl.analysis.evaluation import evaluate_sources
from kfacemtl.models import build_model
from kfacemtl.data import make_dataset
from kfacemtl.data import make_source
from kfacemtl.tasks import resolve_tasks
from kfacemtl.training import compile_model, train_run

TASKS = resolve_tasks(None)
SMALL = dict(widths=(16, 32, 64, 128), depths=1, embedding_dim=128, head_units=32, dropout=0.1)


def _chance(task, labels):
    y = labels[task.name]
    if task.kind == "classification":
        return np.bincount(y.astype(int)).max() / len(y)  # always the majority class
    if task.kind == "multilabel":
        return float(np.mean(y.mean(0)))  # F1 of random guessing at each AU's rate = its rate
    if task.dim == 1:
        return float(np.mean(np.abs(y - y.mean())))  # MAE of always the mean
    return 0.0  # a constant has CCC 0


@pytest.mark.e2e
def test_tiny_multi_source_fit_beats_chance_on_every_task():
    # Three sources, each labelling only some tasks, train one small network with balanced mixing (each
    # domain a third of every batch, so the small lab set, the only AU labels, is not drowned).
    # At 48×48 (a quarter of the 64×64 demo's work per step). Measured on a 2-core CPU, seeds 0 and 1, 1,600 steps
    # of 48 faces: lab expression 0.46 / 0.44 (majority 0.16), lab AU mean F1 0.48 / 0.45, affect valence/arousal
    # CCC 0.47 / 0.52, portraits age MAE 10.8 / 10.1 (0.70 / 0.65 × the mean's). 1,200 steps leave the AU F1
    # within 0.1 of chance on both seeds; at 32×32 expression and AUs stay near chance; narrower models halve the
    # time but miss the AU bound: widths 8-64 0.27 / 0.16, widths 12-96 0.50 / 0.29.
    keras.utils.set_random_seed(0)
    train = [make_source(f"synthetic:{d}?n={n}") for d, n in (("portraits", 1536), ("lab", 768), ("affect", 1024))]
    model = compile_model(build_model(TASKS, input_shape=(48, 48, 3), **SMALL), learning_rate=1e-3)
    ds = make_dataset(train, TASKS, batch_size=48, mixing="balanced", image_size=(48, 48))
    model.fit(ds, steps_per_epoch=100, epochs=16, verbose=0)
    tests = {d: make_source(f"synthetic:{d}?split=test&n=400") for d in ("portraits", "lab", "affect")}
    res = evaluate_sources(model, list(tests.values()), image_size=(48, 48))
    where = {"age": "portraits", "gender": "portraits", "race": "portraits", "expression": "lab",
             "action_units": "lab", "valence_arousal": "affect"}
    for task in TASKS:
        d = where[task.name]
        m = res[f"{d}-test"][task.name]
        chance = _chance(task, tests[d].ground_truth())
        if task.kind == "classification":
            assert m["accuracy"] > chance + 0.05, (task.name, m["accuracy"], chance)
        elif task.kind == "multilabel":
            assert m["mean_f1"] > chance + 0.1, (task.name, m["mean_f1"], chance)
        elif task.dim == 1:
            assert m["mae"] < 0.8 * chance, (task.name, m["mae"], chance)  # measured 0.65 × chance
        else:
            assert m["mean_ccc"] > 0.2, (task.name, m["mean_ccc"])


@pytest.mark.slow
def test_a_short_two_domain_fit_learns_gender_though_half_of_every_batch_lacks_it():
    # make test's learning check (the fit above, to quality on every task, is end to end): portraits label gender,
    # lab faces do not, and balanced mixing makes every batch half lab faces, masked out of the gender loss. Measured
    # on a 2-core CPU, seeds 0 and 1, 300 steps of 32 (10-14 s): gender 0.78 / 0.84 on portraits-test (majority
    # 0.56); lab expression, 16 faces a step, is not learned yet (0.15 / 0.11, majority 0.17: 400 steps of 64 give
    # 0.29 / 0.24), so only gender is asserted here.
    tasks = resolve_tasks(["gender", "expression"])
    train = [make_source("synthetic:portraits?n=1024"), make_source("synthetic:lab?n=1024")]
    model = compile_model(build_model(tasks, input_shape=(48, 48, 3), **SMALL), learning_rate=1e-3)
    ds = make_dataset(train, tasks, batch_size=32, mixing="balanced", image_size=(48, 48))
    model.fit(ds, steps_per_epoch=300, epochs=1, verbose=0)
    test = make_source("synthetic:portraits?split=test&n=300")
    accuracy = evaluate_sources(model, [test], image_size=(48, 48))["portraits-test"]["gender"]["accuracy"]
    assert accuracy > _chance(tasks[0], test.ground_truth()) + 0.1, accuracy


def _cfg(**training):
    return {"tasks": ["gender", "expression"],
            "sources": ["synthetic:lab?n=64", "synthetic:portraits?n=64"],
            "eval_sources": ["synthetic:street?split=test&n=32"],
            "model": {"widths": [8, 16], "depths": [1, 1], "embedding_dim": 16, "head_units": 8},
            "training": {"epochs": 2, "steps_per_epoch": 3, "batch_size": 16, **training}}


def _logged_epochs(run_dir):
    """Epoch numbers in a run's history.csv, in file order."""
    return [int(line.split(",")[0]) for line in (run_dir / "history.csv").read_text().splitlines()[1:]]


def test_a_run_with_mixup_trains_on_blended_faces_and_keeps_the_setting(tmp_path):
    report = train_run(_cfg(mixup=0.4, label_smoothing=0.1), tmp_path / "run", verbose=0)
    assert np.isfinite(report["final_epoch_metrics"]["loss"])
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["training"]
    assert saved["mixup"] == 0.4
    with pytest.raises(ConfigError, match="the config differs"):  # a resumed run keeps what it computes
        train_run(_cfg(mixup=0.2, epochs=3), tmp_path / "run", resume=True, verbose=0)


def test_run_directory_and_resume(tmp_path):
    out = tmp_path / "run"
    report = train_run(_cfg(), out, verbose=0)
    for name in ("config.yaml", "model.keras", "history.csv", "report.json", "plots/loss.png",
                 "plots/confusion_street-test_expression.png", "logs"):
        assert (out / name).exists(), name
    assert report["evaluation"]["street-test"]["expression"]["n"] == 32
    assert json.loads((out / "report.json").read_text())["epochs_done"] == 2
    # a finished run is never clobbered
    with pytest.raises(ConfigError, match="not empty; pass --resume"):
        train_run(_cfg(), out, verbose=0)
    # resume with more epochs continues from the last finished epoch
    report = train_run(_cfg(epochs=3), out, resume=True, verbose=0)
    epochs = _logged_epochs(out)
    assert epochs == [0, 1, 2] and report["epochs_done"] == 3
    with pytest.raises(ConfigError, match="config differs"):
        train_run(_cfg(batch_size=8), out, resume=True, verbose=0)


KILLED_RUN = """
import json, sys, time
import keras
from kfacemtl.training import train_run

class Stall(keras.callbacks.Callback):  # mid-epoch 3: tell the test, then wait for its SIGKILL
    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch
    def on_train_batch_end(self, batch, logs=None):
        if self.epoch == 2 and batch == 1:
            open(sys.argv[2], "w").close()
            time.sleep(120)

train_run(json.loads(sys.argv[3]), sys.argv[1], verbose=0, extra_callbacks=[Stall()])
"""


def test_a_run_killed_mid_epoch_resumes_without_losing_a_finished_epoch(tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time
    out, marker = tmp_path / "run", tmp_path / "killed-here"
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    child = subprocess.Popen([sys.executable, "-c", KILLED_RUN, str(out), str(marker), json.dumps(_cfg(epochs=4))],
                             env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 240
    while not marker.exists() and child.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    assert marker.exists(), child.stderr.read().decode()[-2000:] if child.poll() is not None else "timed out"
    os.kill(child.pid, signal.SIGKILL)  # no handler, no cleanup: as a crash or an OOM kill
    child.wait()
    assert child.returncode == -signal.SIGKILL
    assert not (out / "model.keras").exists() and (out / "backup").exists()
    assert _logged_epochs(out) == [0, 1]  # epoch 3 was under way
    report = train_run(_cfg(epochs=4), out, resume=True, verbose=0)
    assert _logged_epochs(out) == [0, 1, 2, 3]  # epochs 1 and 2 were not trained again; epoch 3 was redone
    assert report["epochs_done"] == 4 and (out / "model.keras").exists()


def test_xla_is_on_by_default_only_where_a_gpu_is():
    import tensorflow as tf
    small = dict(SMALL, input_shape=(16, 16, 3))
    gpu = bool(tf.config.list_physical_devices("GPU"))
    assert compile_model(build_model(TASKS, **small)).jit_compile is gpu  # "auto": off on this CPU
    assert compile_model(build_model(TASKS, **small), jit_compile=True).jit_compile is True
    with tf.distribute.MirroredStrategy(["/cpu:0"]).scope():  # "auto" is off under tf.distribute
        assert compile_model(build_model(TASKS, **small)).jit_compile is False


def test_augmentation_steps_per_call_and_prefetch_follow_the_hardware(tmp_path, monkeypatch):
    import tensorflow as tf

    from kfacemtl.training import run as training
    from kfacemtl.training import augment_on, steps_per_execution
    gpu = bool(tf.config.list_physical_devices("GPU"))
    assert augment_on("auto") == ("step" if gpu else "pipeline") and augment_on("step") == "step"
    assert steps_per_execution("auto") == (8 if gpu else 1) and steps_per_execution(3) == 3
    assert steps_per_execution("auto", "dynamic") == 1  # its windows count calls
    assert steps_per_execution("auto", strategy="mirrored") == 1  # Keras's several-step function fails there
    with pytest.raises(ValueError, match="^augment_on: expected one of"):
        augment_on("gpu")
    asked = []
    real = training.make_dataset
    monkeypatch.setattr(training, "make_dataset", lambda *a, **k: asked.append(k["augment"]) or real(*a, **k))
    cfg = _cfg(epochs=2)
    cfg["training"].update(steps_per_epoch=5, augment_on="step", steps_per_execution=2)  # 5: not a multiple of 2
    report = train_run(cfg, tmp_path / "run", verbose=0)
    assert asked == [False] and report["augmented_in"] == "step"  # the pipeline leaves it to the step
    assert report["steps_per_epoch"] == 5 and _logged_epochs(tmp_path / "run") == [0, 1]
    cfg["training"].update(augment_on="pipeline")
    assert train_run(cfg, tmp_path / "pipe", verbose=0)["augmented_in"] == "pipeline" and asked[-1] is True
    cfg["training"].update(augment=False)
    assert train_run(cfg, tmp_path / "none", verbose=0)["augmented_in"] is None and asked[-1] is False
    cfg["training"].update(augment={"zoom": 0.1, "rotate": 10}, augment_on="step", epochs=1)
    model, _, _ = training.model_for_run(training.prepare_run(cfg, tmp_path / "geometric"))
    assert model.augment_seed == 0 and model.augment_geometry == {"zoom": 0.1, "rotate": 10.0}
    cfg["training"].update(augment_on="pipeline")
    assert train_run(cfg, tmp_path / "zoom", verbose=0)["augmented_in"] == "pipeline"
    assert asked[-1] == {"zoom": 0.1, "rotate": 10}  # the pipeline zooms and turns


def test_sources_must_label_a_task_of_the_model(tmp_path):
    cfg = _cfg()
    cfg["sources"] = ["synthetic:affect?n=16&tasks=valence_arousal"]
    with pytest.raises(ConfigError, match="none of which is a task"):
        train_run(cfg, tmp_path / "r", verbose=0)
    assert resolve_config(_cfg())["training"]["epochs"] == 2


def test_cosine_schedule_decays_over_the_run_and_is_saved(tmp_path):
    from kfacemtl.models import load_model
    from kfacemtl.training import learning_rate_schedule
    sched = learning_rate_schedule(1e-3, "cosine", total_steps=6)
    assert float(sched(0)) == pytest.approx(1e-3) and float(sched(3)) == pytest.approx(0.505e-3, rel=1e-3)
    assert float(sched(100)) == pytest.approx(1e-5)
    assert learning_rate_schedule(1e-3) == 1e-3
    with pytest.raises(ConfigError, match="training.lr_schedule"):
        resolve_config({**_cfg(lr_schedule="step")})
    out = tmp_path / "run"
    train_run(_cfg(epochs=1, lr_schedule="cosine"), out, verbose=0)
    model = load_model(out / "model.keras")  # the schedule is saved with the optimizer
    assert int(model.optimizer.iterations) == 3
    assert float(model.optimizer.learning_rate) == pytest.approx(1e-5, rel=1e-3)  # the run's 3 steps decayed it fully


def test_dynamic_learning_rate_runs_in_train_run_and_is_logged(tmp_path):
    out = tmp_path / "run"
    train_run(_cfg(epochs=2, lr_schedule="dynamic"), out, verbose=0)
    header, *rows = (out / "history.csv").read_text().splitlines()
    column = header.split(",").index("learning_rate")
    rates = [float(r.split(",")[column]) for r in rows]
    assert len(rates) == 2 and all(1e-6 <= r <= 1e-2 for r in rates)  # within [initial / 1000, 10 x initial]


def test_dynamic_learning_rate_options_reach_the_callback(tmp_path):
    out = tmp_path / "run"
    train_run(_cfg(epochs=2, lr_schedule="dynamic", dynamic_lr_options={"min_lr": 5e-4}), out, verbose=0)
    header, *rows = (out / "history.csv").read_text().splitlines()
    column = header.split(",").index("learning_rate")
    # the final anneal would take 1e-3 towards 1e-5 by the last step; the option's floor stops it at 5e-4
    assert float(rows[-1].split(",")[column]) == pytest.approx(5e-4)
    with pytest.raises(ConfigError, match="training.dynamic_lr_options"):
        train_run(_cfg(lr_schedule="dynamic", dynamic_lr_options={"windw": 10}), tmp_path / "bad", verbose=0)
    assert not (tmp_path / "bad").exists()  # refused before the run directory is made
    with pytest.raises(ConfigError, match="training.dynamic_lr_options"):  # the options of a schedule not chosen
        resolve_config(_cfg(lr_schedule="cosine", dynamic_lr_options={"window": 10}))


DETERMINISTIC_RUNS = """
import json, sys
import numpy as np
from kfacemtl.models import load_model
from kfacemtl.training import train_run
cfg, out = json.loads(sys.argv[1]), sys.argv[2]
metrics = [train_run(cfg, f"{out}/{i}", verbose=0)["final_epoch_metrics"] for i in range(2)]
a, b = (load_model(f"{out}/{i}/model.keras").get_weights() for i in range(2))
print(json.dumps({"metrics": metrics, "max_weight_difference": max(float(np.abs(x - y).max()) for x, y in zip(a, b))}))
"""


@pytest.mark.slow
def test_the_same_seed_gives_the_same_run_with_op_determinism(tmp_path):
    import os
    import subprocess
    import sys
    cfg = _cfg(deterministic=True, weighting="uncertainty")  # augmentation, mixing, dropout, a weighting: all seeded
    proc = subprocess.run([sys.executable, "-c", DETERMINISTIC_RUNS, json.dumps(cfg), str(tmp_path)],
                          capture_output=True, text=True, timeout=300, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["metrics"][0] == out["metrics"][1] and out["max_weight_difference"] == 0.0


def test_a_full_disk_while_saving_the_checkpoint_leaves_the_previous_one(tmp_path, monkeypatch):
    import errno

    from kfacemtl.models import MultiTaskModel
    out, original, calls = tmp_path / "run", MultiTaskModel.save_weights, []

    def full_disk(self, filepath, *args, **kwargs):  # the second checkpoint: half written, then ENOSPC
        calls.append(filepath)
        if len(calls) == 2:
            with open(filepath, "wb") as f:
                f.write(b"\x89HDF\r\n\x1a\n" + b"\0" * 100)
            raise OSError(errno.ENOSPC, "No space left on device", str(filepath))
        return original(self, filepath, *args, **kwargs)

    monkeypatch.setattr(MultiTaskModel, "save_weights", full_disk)
    with pytest.raises(OSError, match="No space left on device"):
        train_run(_cfg(epochs=3), out, verbose=0)
    monkeypatch.setattr(MultiTaskModel, "save_weights", original)
    backup = out / "backup"
    assert sorted(p.name for p in backup.iterdir()) == ["latest.weights.h5", "training_metadata.json"]  # no debris
    assert json.loads((backup / "training_metadata.json").read_text())["epoch"] == 1  # one finished epoch, intact
    train_run(_cfg(epochs=3), out, resume=True, verbose=0)
    assert _logged_epochs(out) == [0, 1, 2]  # resumed after epoch 1: nothing lost, nothing done twice


def test_a_run_directory_holds_no_face_images(tmp_path):
    import tensorflow as tf
    out = tmp_path / "run"
    report = train_run(_cfg(), out, verbose=0)
    files = {str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()}
    events = {f for f in files if f.startswith("logs/") and ".tfevents." in f}
    assert files - events == {"config.yaml", "model.keras", "history.csv", "report.json", *report["plots"]}
    kinds = set()
    for f in events:  # TensorBoard: scalar curves only, no image (or any other) summaries
        for event in tf.compat.v1.train.summary_iterator(str(out / f)):
            kinds.update(v.metadata.plugin_data.plugin_name or v.WhichOneof("value") for v in event.summary.value)
    assert kinds == {"scalars"}, kinds
    assert all(p.startswith("plots/") for p in report["plots"])  # charts: curves and confusion matrices
    assert (out / "report.json").stat().st_size < 50_000 and (out / "history.csv").stat().st_size < 10_000


def test_training_can_end_by_calibrating_on_the_validation_parts(tmp_path):
    cfg = _cfg(calibrate="flip")  # fitted to the answers that the face and its mirror averaged give (true: one view)
    cfg["sources"] = [s + "&val_fraction=0.25" for s in cfg["sources"]]
    report = train_run(cfg, tmp_path / "run", verbose=0)
    fitted = {t: c["temperature"] for t, c in report["calibration"].items()}
    assert set(fitted) == {"gender", "expression"} and report["calibration"]["gender"]["n"] == 16
    from kfacemtl.models import load_model
    assert load_model(tmp_path / "run" / "model.keras").temperatures == pytest.approx(fitted)
    assert (tmp_path / "run" / "plots" / "reliability_expression.png").exists()
    assert {c["tta"] for c in report["calibration"].values()} == {"flip"}
    with pytest.raises(ConfigError, match="'training.calibrate': needs a training source that holds a validation"):
        resolve_config(_cfg(calibrate=True))
    expected = r"'training.calibrate': expected true, false or the views .*\(flip, six\)"
    for bad in ("mirror", ["flip"]):  # a list too: an error naming the key, not a TypeError
        with pytest.raises(ConfigError, match=expected):
            resolve_config({**cfg, "training": {**cfg["training"], "calibrate": bad}})


def test_a_run_started_before_a_config_key_existed_resumes_and_a_changed_one_does_not(tmp_path):
    import yaml
    from kfacemtl.training.run import prepare_run_dir
    cfg = resolve_config({"sources": ["synthetic:lab?n=8"]})
    old = {k: dict(v) if isinstance(v, dict) else v for k, v in cfg.items()}
    del old["training"]["calibrate"]  # written by a version without that key (at its default)
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(old))
    prepare_run_dir(tmp_path, cfg, resume=True)
    changed = resolve_config({"sources": ["synthetic:lab?n=8"], "training": {"epochs": 3, "learning_rate": 0.5}})
    with pytest.raises(ConfigError, match="differs"):  # the learning rate may not change
        prepare_run_dir(tmp_path, changed, resume=True)
