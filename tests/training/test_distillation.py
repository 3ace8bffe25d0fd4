"""Data distillation: the transform ensemble, selection, pseudo-labels in the pipeline, rounds in fit."""
import json
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pandas as pd
import pytest
import yaml

from helpers import ROOT, TINY, tiny_model, write_png
from kfacemtl.models.views import transform_batch, transform_boxes
from kfacemtl.training.distillation import DataDistillation, EnsembleTeacher, PseudoLabels, distill, select
from kfacemtl.errors import ConfigError
from kfacemtl.models import MaskedTaskLoss, build_model, class_accuracy
from kfacemtl.data import DecodedImages, cached_sources, make_dataset
from kfacemtl.data import CsvSource, ImagesSource, RowSubset, SyntheticSource, WithoutLabels, make_source
from kfacemtl.tasks import get_task, resolve_tasks
from kfacemtl.training import compile_model, train_run


def _images(b=3, size=16, seed=0):
    return np.random.default_rng(seed).random((b, size, size, 3)).astype("float32")


def test_ensemble_is_the_mean_of_per_transform_predictions():
    model = tiny_model(["age", "gender", "action_units"])
    transforms = [(False, 1.0, 0.0, 0.0), (True, 1.0, 0.0, 0.0), (False, 1.2, 0.05, -0.05)]
    x = _images(size=64)
    out = EnsembleTeacher(model, transforms)(x)
    per_transform = [model(transform_batch(x, transform_boxes([t])), training=False) for t in transforms]
    for k, task in enumerate(model.output_names):
        stack = np.stack([p[k].numpy() for p in per_transform])
        np.testing.assert_allclose(out[task][0], stack.mean(0), rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(out[task][1], stack.std(0).mean(-1), rtol=1e-4, atol=1e-5)


def test_select_thresholds_by_kind_and_class_balance():
    gender, age, aus = get_task("gender"), get_task("age"), get_task("action_units")
    probs = np.array([[0.9, 0.1], [0.6, 0.4], [0.2, 0.8], [0.05, 0.95]])
    cand = np.array([True, True, True, False])  # the last row has a real label: never pseudo-labelled
    assert select(gender, probs, np.zeros(4), cand, 0.7).tolist() == [True, False, True, False]
    assert select(age, np.zeros((3, 1)), np.array([1.0, 7.0, 3.0]), np.ones(3, bool), 6.0).tolist() == [True, False, True]
    p = np.array([[0.95] * 14, [0.5] * 14])
    assert select(aus, p, np.zeros(2), np.ones(2, bool), 0.8).tolist() == [True, False]
    # balance: 5 confident rows of class 0, one of class 1 and one of class 2 -> class 0 capped at the median (1),
    # keeping its most confident row
    expr = get_task("expression")
    probs = np.full((7, 7), 0.01)
    for i, (c, conf) in enumerate([(0, 0.8), (0, 0.95), (0, 0.9), (0, 0.85), (0, 0.82), (1, 0.9), (2, 0.9)]):
        probs[i, c] = conf
    kept = select(expr, probs, np.zeros(7), np.ones(7, bool), 0.7, balance=True)
    assert kept.tolist() == [False, True, False, False, False, True, True]


def test_pseudo_labels_fill_missing_labels_real_labels_win_and_updates_need_no_rebuild():
    tasks = resolve_tasks(["gender", "expression"])
    portraits = make_source("synthetic:portraits?n=8")  # gender labelled, expression missing
    store = PseudoLabels([portraits], tasks)
    ds = make_dataset([portraits], tasks, batch_size=8, image_size=(16, 16), augment=False, pseudo_labels=store)
    it = iter(ds)
    _, y, w = next(it)
    assert np.all(w["expression"].numpy() == 0)
    real_gender = portraits.labels(tasks)[0]["gender"]
    # each row's expression pseudo-label is its real gender, so a batch (which may mix rows of
    # two passes: training maps run out of order) shows whether labels stay with their rows
    store.assign("portraits-train", "expression", np.eye(7)[real_gender], np.full(8, 0.5))
    store.assign("portraits-train", "gender", np.eye(2)[1 - real_gender], np.full(8, 0.5))
    for _ in range(20):  # the same iterator: it reads the variables anew once its prefetched rows are used
        _, y, w = next(it)
    np.testing.assert_array_equal(w["expression"].numpy(), 0.5)
    np.testing.assert_array_equal(w["gender"].numpy(), 1.0)  # real labels win over (contrary) pseudo-labels
    np.testing.assert_array_equal(y["expression"].numpy(), y["gender"].numpy())
    assert set(real_gender.tolist()) == {0, 1} and set(y["gender"].numpy().tolist()) <= {0, 1}


@pytest.mark.parametrize("soft", [False, True])
def test_merging_a_batch_of_rows_equals_merging_each_row(soft):
    import tensorflow as tf
    tasks = resolve_tasks(["age", "gender", "expression", "action_units"])
    src = make_source("synthetic:portraits?n=6")  # age and gender labelled; expression and AUs missing
    store = PseudoLabels([src], tasks, soft=soft)
    rng = np.random.default_rng(0)
    store.assign("portraits-train", "age", rng.uniform(0, 90, (6, 1)), [0.5, 0, 0.5, 0.5, 0, 0.5])
    store.assign("portraits-train", "gender", np.eye(2)[[0, 1, 1, 0, 1, 0]], np.full(6, 0.5))
    store.assign("portraits-train", "expression", rng.dirichlet(np.ones(7), 6), [0.5, 0.5, 0, 0.5, 0.5, 0])
    store.assign("portraits-train", "action_units", rng.uniform(size=(6, 14)), np.full(6, 0.5))
    labels, weights = src.labels(tasks)
    weights["gender"][[1, 4]] = 0  # two rows without their real gender: pseudo-labels fill them
    labels["expression"] = np.eye(7, dtype="float32")[[0, 1, 2, 3, 4, 5]]  # as co-annotation makes them
    rows = tf.constant([4, 0, 5, 1], tf.int64)
    batch = store.merge("portraits-train", rows, *({t: tf.gather(v, rows) for t, v in d.items()}
                                                  for d in (labels, weights)))
    one_by_one = [store.merge("portraits-train", r, *({t: tf.constant(v[int(r)]) for t, v in d.items()}
                                                      for d in (labels, weights))) for r in rows]
    for k in (0, 1):
        for t in batch[k]:
            np.testing.assert_allclose(batch[k][t].numpy(), np.stack([m[k][t].numpy() for m in one_by_one]))
    assert batch[1]["gender"].numpy().tolist() == [0.5, 1.0, 1.0, 0.5]  # rows 4 and 1 took pseudo-labels


def test_soft_pseudo_labels_give_distributions_for_every_source():
    tasks = resolve_tasks(["gender", "expression"])
    lab, street = make_source("synthetic:lab?n=4"), make_source("synthetic:street?n=4")
    store = PseudoLabels([street], tasks, soft=True)  # lab is not in the store: still one-hot
    soft = np.array([[0.1, 0.9]] * 4)
    store.assign("street-train", "gender", soft, np.full(4, 0.25))
    ds = make_dataset([lab, street], tasks, batch_size=16, image_size=(16, 16), pseudo_labels=store)
    _, y, w = next(iter(ds))
    assert y["gender"].shape == (16, 2) and y["expression"].shape == (16, 7)
    rows = w["gender"].numpy() > 0
    np.testing.assert_allclose(y["gender"].numpy()[rows], soft[:1].repeat(rows.sum(), 0), atol=1e-6)
    labelled = w["expression"].numpy() > 0
    np.testing.assert_array_equal(y["expression"].numpy()[labelled].sum(-1), 1.0)  # lab's real labels, one-hot


def test_loss_and_accuracy_accept_class_distributions():
    loss = MaskedTaskLoss("classification", "crossentropy")
    p = np.array([[0.7, 0.3], [0.2, 0.8]], "float32")
    target = np.array([[0.6, 0.4], [0.0, 1.0]], "float32")
    expected = -(0.6 * np.log(0.7) + 0.4 * np.log(0.3))  # the second row is masked
    assert float(loss(target, p, np.array([1.0, 0.0]))) == pytest.approx(expected, rel=1e-5)
    assert float(loss(np.array([1, 1]), p, np.array([0.0, 1.0]))) == pytest.approx(-np.log(0.8), rel=1e-5)
    assert class_accuracy(target, p).numpy().tolist() == [1.0, 1.0]
    assert class_accuracy(np.array([1, 0]), p).numpy().tolist() == [0.0, 0.0]


def _fit_with_rounds(tmp_path, tasks, sources, **options):
    keras.utils.set_random_seed(0)
    model = tiny_model(tasks)
    compile_model(model)
    d = DataDistillation(sources, model.tasks, verbose=0, state_dir=tmp_path, **options)
    ds = make_dataset(sources, model.tasks, batch_size=16, image_size=(64, 64), pseudo_labels=d.pseudo_labels)
    history = model.fit(ds, epochs=d.total_epochs, steps_per_epoch=2, callbacks=[d], verbose=0)
    return model, d, history


def test_rounds_run_at_round_boundaries_and_log_counts_and_quality(tmp_path):
    tasks = ["age", "gender", "expression"]
    sources = [make_source("synthetic:portraits?n=24"), make_source("synthetic:lab?n=24"),
               make_source("synthetic:street?n=24")]
    # thresholds every prediction passes, so each round pseudo-labels every missing label
    model, d, history = _fit_with_rounds(tmp_path, tasks, sources, rounds=2, epochs_per_round=2,
                                         thresholds={"gender": 0.0, "expression": 0.0, "age": 1e9})
    assert d.total_epochs == 6 and [e["round"] for e in d.log] == [1, 2]
    street = d.log[-1]["sources"]["street-train"]
    assert {t: s["accepted"] for t, s in street.items()} == {"age": 24, "gender": 24, "expression": 24}
    truth = sources[2].ground_truth()["gender"]
    accepted = d.pseudo_labels.values["street-train"]["gender"].numpy().argmax(-1)
    assert street["gender"]["quality_accepted"] == pytest.approx(np.mean(accepted == truth))
    portraits = d.log[-1]["sources"]["portraits-train"]
    assert set(portraits) == {"expression"}  # its age and gender are real labels: nothing to fill
    assert history.history["pseudo_gender"] == [0, 0, 48, 48, 48, 48]  # lab + street, from round 1 (epoch 2) on
    saved = json.loads((tmp_path / "distillation.json").read_text())["rounds"]
    assert [e["round"] for e in saved] == [1, 2] and (tmp_path / "plots" / "distillation.png").exists()
    with np.load(tmp_path / "pseudo_labels.npz") as z:
        np.testing.assert_array_equal(z["weights/street-train/gender"], 0.5)  # the default pseudo-label weight


def test_pseudo_label_accuracy_is_scored_against_ground_truth(tmp_path):
    """An oracle teacher (a model whose gender head copies the truth is hard to build; a constant one is
    easy): a teacher that always says class 1 scores exactly the share of class 1 in the ground truth."""
    tasks = resolve_tasks(["gender"])
    street = make_source("synthetic:street?n=40")
    teacher = tiny_model(["gender"])
    out = teacher.get_layer("gender")
    out.set_weights([np.zeros_like(out.get_weights()[0]), np.array([-5.0, 5.0], "float32")])
    d = DataDistillation([street], tasks, rounds=1, teacher=teacher, verbose=0)
    entry = d.run_round(tiny_model(["gender"]))
    truth = street.ground_truth()["gender"]
    assert entry["sources"]["street-train"]["gender"]["quality_accepted"] == pytest.approx(np.mean(truth == 1))


def test_single_task_teachers_only_label_their_task_and_stay_fixed(tmp_path):
    tasks = resolve_tasks(["gender", "expression"])
    sources = [make_source("synthetic:street?n=16"), make_source("synthetic:portraits?n=8")]
    gender_teacher = tiny_model(["gender"], seed=3)
    before = [w.copy() for w in gender_teacher.get_weights()]
    d = DataDistillation(sources, tasks, rounds=1, teacher={"gender": gender_teacher},
                         thresholds={"gender": 0.0}, verbose=0)
    entry = d.run_round(tiny_model(["gender", "expression"]))
    assert set(entry["sources"]["street-train"]) == {"gender"}
    assert "portraits-train" not in entry["sources"]  # every face there has a real gender label: not even predicted
    assert d.pseudo_labels.counts()["street-train"] == {"gender": 16, "expression": 0}
    assert all(np.array_equal(a, b) for a, b in zip(before, gender_teacher.get_weights()))
    with pytest.raises(ValueError, match=r"^teacher\.age: not a task of the model"):
        DataDistillation(sources, tasks, teacher={"age": gender_teacher})
    from kfacemtl.models import build_model
    small = build_model(resolve_tasks(["gender"]), input_shape=(32, 32, 3), **TINY)
    with pytest.raises(ConfigError, match=r"takes \(32, 32\) images, the student \(64, 64\)"):
        DataDistillation(sources, tasks, teacher={"gender": small}).run_round(tiny_model(["gender", "expression"]))


def test_reinit_puts_the_student_back_to_its_initial_weights(tmp_path):
    tasks = ["gender"]
    sources = [make_source("synthetic:portraits?n=16"), make_source("synthetic:street?n=16")]
    seen = []

    class Spy(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            seen.append([w.copy() for w in self.model.get_weights()])

    keras.utils.set_random_seed(0)
    model = tiny_model(tasks)
    compile_model(model)
    initial = [w.copy() for w in model.get_weights()]
    d = DataDistillation(sources, model.tasks, rounds=1, epochs_per_round=1, reinit=True, verbose=0)
    ds = make_dataset(sources, model.tasks, batch_size=8, image_size=(64, 64), pseudo_labels=d.pseudo_labels)
    model.fit(ds, epochs=2, steps_per_epoch=2, callbacks=[d, Spy()], verbose=0)
    assert all(np.array_equal(a, b) for a, b in zip(initial, seen[1]))  # epoch 1 began from the initial weights
    assert int(model.optimizer.iterations.numpy()) == 2  # and a fresh optimizer state


def test_a_resumed_run_keeps_its_rounds(tmp_path):
    tasks = ["gender"]
    sources = [make_source("synthetic:portraits?n=16"), make_source("synthetic:street?n=16")]
    _, d, _ = _fit_with_rounds(tmp_path, tasks, sources, rounds=1, epochs_per_round=1, thresholds={"gender": 0.0})
    stamp = (tmp_path / "pseudo_labels.npz").stat().st_mtime_ns
    _, again, _ = _fit_with_rounds(tmp_path, tasks, sources, rounds=1, epochs_per_round=1, thresholds={"gender": 0.0})
    assert (tmp_path / "pseudo_labels.npz").stat().st_mtime_ns == stamp  # round 1 was not redone
    assert again.pseudo_labels.counts() == d.pseudo_labels.counts() == {"portraits-train": {"gender": 0},
                                                                        "street-train": {"gender": 16}}


def test_the_round_loop_function(tmp_path):
    keras.utils.set_random_seed(0)
    model = tiny_model(["gender"])
    compile_model(model)
    sources = [make_source("synthetic:portraits?n=16"), make_source("synthetic:street?n=16")]
    rounds = distill(model, sources, rounds=2, epochs_per_round=1, steps_per_epoch=2, batch_size=8, verbose=0,
                     thresholds={"gender": 0.0})
    assert [e["round"] for e in rounds.log] == [1, 2]
    assert int(model.optimizer.iterations.numpy()) == 6  # three rounds of one epoch of 2 steps


def test_unlabelled_file_sources_are_streamed_and_hidden_labels_only_score(tmp_path):
    rng = np.random.default_rng(0)
    rows = ["path,gender"]
    for k in range(6):
        write_png(tmp_path / "faces" / "a" / f"{k}.png", rng.integers(0, 255, (40, 40, 3)))
        rows.append(f"faces/a/{k}.png,{k % 2}")
    (tmp_path / "labels.csv").write_text("\n".join(rows) + "\n")
    images = ImagesSource(str(tmp_path / "faces"))
    assert len(images) == 6 and images.tasks == () and images.paths()[0].endswith("0.png")
    hidden = WithoutLabels(CsvSource(str(tmp_path / "labels.csv"), name="target"))
    tasks = resolve_tasks(["gender"])
    assert hidden.labels(tasks)[1]["gender"].sum() == 0  # nothing to train on
    d = DataDistillation([images, hidden], tasks, rounds=1, thresholds={"gender": 0.0}, batch_size=4, verbose=0)
    entry = d.run_round(tiny_model(["gender"]))
    assert entry["sources"]["faces"]["gender"]["accepted"] == 6 and "quality_accepted" not in entry["sources"]["faces"]["gender"]
    assert entry["sources"]["target"]["gender"]["scored"] == 6
    # the training cache, and leaving undecodable files out, keep the hidden labels that score
    cached = DecodedImages(hidden, (32, 32))
    for wrapped, truth in ((cached, [0, 1, 0, 1, 0, 1]), (RowSubset(cached, [1, 2, 5]), [1, 0, 1])):
        d = DataDistillation([wrapped], tasks, rounds=1, verbose=0)
        assert d.ground_truth["target"]["gender"].tolist() == truth


def test_train_run_with_distillation_from_config(tmp_path):
    cfg = {"tasks": ["gender", "expression"],
           "sources": ["synthetic:portraits?n=32", "synthetic:lab?n=32"],
           "unlabelled_sources": ["synthetic:street?n=32&split=test"],  # a test split: labelled, but hidden
           "eval_sources": ["synthetic:street?split=test&n=16"],
           "model": {"input_shape": [32, 32, 3], "widths": [8, 16], "depths": [1, 1], "embedding_dim": 16},
           "training": {"epochs": 4, "steps_per_epoch": 2, "batch_size": 16},
           "distillation": {"rounds": 1, "epochs_per_round": 2, "thresholds": {"gender": 0.0, "expression": 0.0},
                            "soft": True}}
    report = train_run(cfg, tmp_path / "run", verbose=0)
    (entry,) = report["distillation"]
    assert entry["sources"]["street-test"]["gender"]["accepted"] == 32  # its labels were hidden: all candidates
    assert 0 <= entry["sources"]["street-test"]["gender"]["quality_accepted"] <= 1
    for name in ("distillation.json", "pseudo_labels.npz", "plots/distillation.png"):
        assert (tmp_path / "run" / name).exists()
    history = (tmp_path / "run" / "history.csv").read_text().splitlines()
    assert "pseudo_gender" in history[0] and len(history) == 5
    # the teacher of another run, loaded from its run directory
    cfg2 = json.loads(json.dumps(cfg))
    cfg2["distillation"].update(teachers={"gender": str(tmp_path / "run")}, soft=False)
    report = train_run(cfg2, tmp_path / "run2", verbose=0)
    assert set(report["distillation"][0]["sources"]["street-test"]) == {"gender"}


@pytest.mark.parametrize("change, key", [
    ({"training": {"epochs": 5}}, "training.epochs"),
    ({"distillation": {"rounds": 0}}, "unlabelled_sources"),
    ({"distillation": {"rounds": 1, "epochs_per_round": 2, "pseudo_weight": 1.5}}, "distillation.pseudo_weight"),
    ({"distillation": {"rounds": 1, "epochs_per_round": 2, "thresholds": {"gender": -1}}}, "distillation.thresholds.gender"),
    ({"distillation": {"rounds": 1, "epochs_per_round": 2, "rouns": 3}}, "distillation.rouns"),
])
def test_distillation_config_errors_name_the_key(change, key):
    from kfacemtl.training.config import resolve_config
    cfg = {"sources": ["synthetic:lab?n=8"], "unlabelled_sources": ["synthetic:street?n=8"],
           "training": {"epochs": 4}, "distillation": {"rounds": 1, "epochs_per_round": 2}}
    for section, values in change.items():
        cfg[section] = {**cfg[section], **values}
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        resolve_config(cfg)


def test_unknown_threshold_task_is_an_error():
    with pytest.raises(ValueError, match=r"^thresholds\.age: not a task of the model \['gender'\]"):
        DataDistillation([SyntheticSource("street", n=4)], resolve_tasks(["gender"]), thresholds={"age": 3.0})


def test_the_ensemble_is_one_model_call_on_all_transformed_images():
    model = tiny_model(["gender"])
    batches = []
    original = model.call

    def counting(inputs, *args, **kwargs):
        batches.append(inputs)
        return original(inputs, *args, **kwargs)
    model.call = counting
    teacher = EnsembleTeacher(model)
    teacher(_images(b=5, size=64))
    assert len(batches) == 1  # traced once: one call on the T*B images
    assert transform_batch(_images(b=5, size=64), teacher.boxes).shape[0] == teacher.T * 5


def test_single_task_teachers_answer_in_one_traced_pass_without_retracing_warnings():
    # five single-task teachers asked together, batch after batch: one compiled pass through all five (each answering
    # as it would alone), not five functions traced in a row that TensorFlow warns about as retracing. A fresh
    # Python: TensorFlow warns at most twice per function body in a process.
    code = """
        import numpy as np
        from kfacemtl.models import build_model
        from kfacemtl.tasks import resolve_tasks
        from kfacemtl.training.distillation import EnsembleTeacher
        names = ["age", "gender", "race", "expression", "action_units"]
        models = {t: build_model(resolve_tasks([t]), input_shape=(16, 16, 3), widths=(4,), depths=1) for t in names}
        teacher = EnsembleTeacher(models, ((False, 1.0, 0.0, 0.0),))
        x = np.random.default_rng(0).random((4, 16, 16, 3)).astype("float32")
        for batch in (x, x, x[:3], x):
            out = teacher(batch)
        for t in names:
            np.testing.assert_allclose(out[t][0], models[t](x, training=False).numpy(), atol=1e-6)
        print(sorted(teacher(x, ["race"])))
    """
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=300,
                          cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().splitlines()[-1] == "['race']"  # a task asked alone: only its teacher answers
    assert "retracing" not in proc.stderr, proc.stderr[-3000:]


# --- teacher annealing (BAM) ---

import tensorflow as tf  # noqa: E402

from kfacemtl.training.distillation import AnnealedTargets, TeacherAnnealing  # noqa: E402


def test_annealed_targets_mix_real_labels_with_the_teachers_answers_by_lambda():
    tasks = resolve_tasks({"age": {}, "gender": {}, "action_units": {}})
    src = make_source("synthetic:portraits?n=3")
    store = AnnealedTargets([src], tasks, ["age", "gender", "action_units"])
    store.assign(src.name, "age", [[20.0], [40.0], [60.0]])
    store.assign(src.name, "gender", [[0.2, 0.8]] * 3)
    store.assign(src.name, "action_units", np.full((3, 14), 0.5))
    labels = {"age": tf.constant([[30.0], [50.0], [0.0]]), "gender": tf.constant([0, 1, 0]),
              "action_units": tf.zeros((3, 14))}
    weights = {"age": tf.constant([1.0, 1.0, 0.0]), "gender": tf.constant([1.0, 1.0, 0.0]),
               "action_units": tf.constant([1.0, 0.0, 0.0])}
    for lam, age, gender0 in ((0.0, [20.0, 40.0], [0.2, 0.8]), (0.25, [22.5, 42.5], [0.4, 0.6]),
                              (1.0, [30.0, 50.0], [1.0, 0.0])):
        store.mix.assign(lam)
        mixed, out_weights = store.merge(src.name, tf.range(3), labels, weights)
        np.testing.assert_allclose(mixed["age"].numpy()[:2, 0], age, atol=1e-5)
        np.testing.assert_allclose(mixed["gender"].numpy()[0], gender0, atol=1e-5)
        assert mixed["age"].numpy()[2, 0] == 0.0 and mixed["gender"].numpy()[2].tolist() == [1.0, 0.0]  # no label
        np.testing.assert_allclose(mixed["action_units"].numpy()[0], 0.5 * (1 - lam), atol=1e-6)
        assert mixed["action_units"].numpy()[1].max() == 0.0 and out_weights is weights
        one, _ = store.merge(src.name, tf.constant(1), {k: v[1] for k, v in labels.items()},
                             {k: v[1] for k, v in weights.items()})  # one row: the same as in the batch
        np.testing.assert_allclose(one["gender"].numpy(), mixed["gender"].numpy()[1], atol=1e-6)
    other, _ = store.merge("another-source", tf.range(3), labels, weights)  # not held: its classes as distributions
    assert other["gender"].numpy().tolist() == [[1, 0], [0, 1], [1, 0]]


def test_annealed_targets_teach_unlabelled_rows_with_a_fading_weight_when_asked():
    tasks = resolve_tasks({"age": {}, "gender": {}})
    src = make_source("synthetic:portraits?n=3")
    store = AnnealedTargets([src], tasks, ["age", "gender"], unlabelled={"gender": 0.8})
    store.assign(src.name, "age", [[20.0], [40.0], [60.0]])
    store.assign(src.name, "gender", [[0.2, 0.8]] * 3)
    labels = {"age": tf.constant([[30.0], [0.0], [0.0]]), "gender": tf.constant([0, 0, 0])}
    weights = {"age": tf.constant([1.0, 0.0, 0.0]), "gender": tf.constant([1.0, 0.0, 0.5])}
    for lam in (0.0, 0.25, 1.0):
        store.mix.assign(lam)
        mixed, out = store.merge(src.name, tf.range(3), labels, weights)
        # gender: row 1 has no label and now learns the teacher's answer, weighted 0.8 x (1 - lambda)
        np.testing.assert_allclose(mixed["gender"].numpy()[1], [0.2, 0.8], atol=1e-6)
        np.testing.assert_allclose(out["gender"].numpy(), [1.0, 0.8 * (1 - lam), 0.5], atol=1e-6)
        np.testing.assert_allclose(mixed["gender"].numpy()[0], [lam + 0.2 * (1 - lam), 0.8 * (1 - lam)], atol=1e-6)
        # age was not asked for: its unlabelled rows keep the placeholder and weight 0
        assert mixed["age"].numpy()[1:, 0].tolist() == [0.0, 0.0] and out["age"].numpy().tolist() == [1, 0, 0]
    assert weights["gender"].numpy().tolist() == [1.0, 0.0, 0.5]  # the caller's weights are not changed
    with pytest.raises(ValueError, match="unlabelled.race: not a task the teachers answer"):
        AnnealedTargets([src], tasks, ["age", "gender"], unlabelled={"race": 1.0})


def test_teacher_annealing_moves_from_the_teacher_to_the_labels_and_keeps_its_answers(tmp_path):
    tasks = resolve_tasks(["expression"])
    teacher = tiny_model(["expression"], seed=1)
    src = make_source("synthetic:lab?n=32")
    annealing = TeacherAnnealing([src], tasks, {"expression": teacher}, state_dir=tmp_path, verbose=0)
    student = compile_model(tiny_model(["expression"]), learning_rate=1e-2)
    ds = make_dataset([src], tasks, batch_size=16, image_size=(64, 64), training=True,
                      pseudo_labels=annealing.pseudo_labels)
    history = student.fit(ds, epochs=3, steps_per_epoch=4, callbacks=[annealing], verbose=0).history
    lam = history["teacher_lambda"]  # λ at the last step of each epoch: 3/12, 7/12, 11/12
    np.testing.assert_allclose(lam, [3 / 12, 7 / 12, 11 / 12], atol=1e-6)
    (entry,) = annealing.log
    assert entry["sources"]["lab-train"]["expression"]["labelled"] == 32
    images = next(iter(make_dataset([src], tasks, batch_size=32, image_size=(64, 64), training=False)))[0]
    expected = teacher.predict(images, verbose=0)
    np.testing.assert_allclose(annealing.pseudo_labels.values["lab-train"]["expression"].numpy(), expected, atol=1e-5)
    assert (tmp_path / "teacher_targets.npz").is_file()
    again = TeacherAnnealing([src], tasks, {"expression": tiny_model(["expression"], seed=2)}, state_dir=tmp_path,
                             verbose=0)
    again.set_model(student)
    again.on_train_begin()  # a resumed run reads the answers back instead of asking its teachers
    assert "resumed_from" in again.log[0]
    np.testing.assert_allclose(again.pseudo_labels.values["lab-train"]["expression"].numpy(), expected, atol=1e-5)
    with pytest.raises(ValueError, match="teachers.age: not a task"):
        TeacherAnnealing([src], tasks, {"age": teacher})
    with pytest.raises(ValueError, match=r"start: expected .* \[0, 1\)"):
        TeacherAnnealing([src], tasks, {"expression": teacher}, start=1.0)


def test_teachers_answer_as_the_mean_over_their_views_when_asked():
    tasks = resolve_tasks(["expression"])
    teacher = tiny_model(["expression"], seed=1)
    src = make_source("synthetic:lab?n=16")
    images = next(iter(make_dataset([src], tasks, batch_size=16, image_size=(64, 64), training=False)))[0].numpy()
    plain, mirror = teacher.predict(images, verbose=0), teacher.predict(images[:, :, ::-1], verbose=0)
    assert np.abs(plain - mirror).max() > 1e-3  # the mirror changes the untrained teacher's answers
    flip = TeacherAnnealing([src], tasks, {"expression": teacher}, verbose=0, views="flip")
    entry = flip.teach((64, 64))
    np.testing.assert_allclose(flip.pseudo_labels.values["lab-train"]["expression"].numpy(), (plain + mirror) / 2,
                               atol=1e-5)
    assert entry["views"] == "flip"
    none = TeacherAnnealing([src], tasks, {"expression": teacher}, verbose=0)
    assert "views" not in none.teach((64, 64))
    np.testing.assert_allclose(none.pseudo_labels.values["lab-train"]["expression"].numpy(), plain, atol=1e-5)


def test_train_run_with_teacher_annealing_from_config(tmp_path):
    cfg = {"tasks": ["gender", "expression"], "sources": ["synthetic:portraits?n=32", "synthetic:lab?n=32"],
           "model": {"input_shape": [24, 24, 3], "widths": [8, 8], "depths": [1, 1], "embedding_dim": 8,
                     "branch_at": 1},
           "training": {"epochs": 2, "steps_per_epoch": 2, "batch_size": 16, "mixing": "balanced"},
           "distillation": {"anneal": True, "teachers": "single-task",  # trained first, matched to the budget
                            "teacher_epochs": 1,  # but for half the student's epochs
                            "teacher_training": {"optimizer": "sgd"},  # and with an optimizer of their own
                            "teacher_model": {"input_shape": [16, 16, 3]},  # at an input size of their own
                            "anneal_unlabelled": {"expression": 1.0}}}  # portraits' rows learn the teacher's answer
    report = train_run(cfg, tmp_path / "student", verbose=0)
    (entry,) = report["distillation"]
    assert entry["unlabelled"] == {"expression": 1.0}
    assert np.isfinite(pd.read_csv(tmp_path / "student" / "history.csv")["loss"]).all()
    assert set(entry["sources"]["lab-train"]) == {"expression"} and set(entry["sources"]["portraits-train"]) == {
        "gender"}
    assert set(entry["teacher_runs"]) == {"gender", "expression"} and entry["teachers_train_seconds"] > 0
    teacher = yaml.safe_load((tmp_path / "student" / "teachers" / "gender" / "config.yaml").read_text())
    assert teacher["tasks"] == ["gender"] and teacher["training"]["batch_size"] == 8  # half of 16: its share
    assert teacher["model"]["branch_at"] is None and not teacher["distillation"]["anneal"]
    assert teacher["distillation"]["anneal_unlabelled"] == 0 and teacher["distillation"]["teacher_epochs"] is None
    assert teacher["training"]["epochs"] == 1 and len(pd.read_csv(tmp_path / "student" / "teachers" / "gender" /
                                                                  "history.csv")) == 1
    assert teacher["training"]["optimizer"] == "sgd" and teacher["distillation"]["teacher_training"] is None
    assert teacher["model"]["input_shape"] == [16, 16, 3] and teacher["distillation"]["teacher_model"] is None
    assert entry["teacher_sizes"] == {"gender": [16, 16], "expression": [16, 16]}  # each asked at its own size
    assert yaml.safe_load((tmp_path / "student" / "config.yaml").read_text())["training"]["optimizer"] == "adam"
    assert len(pd.read_csv(tmp_path / "student" / "history.csv")) == 2
    assert "teacher_lambda" in (tmp_path / "student" / "history.csv").read_text().splitlines()[0]
    for change, key in (({"anneal": True}, "distillation.teachers"),
                        ({"teachers": "single-task"}, "distillation.teachers"),
                        ({"anneal": True, "teachers": "x", "rounds": 1, "epochs_per_round": 1}, "distillation.anneal"),
                        ({"anneal": True, "teachers": "x", "anneal_start": 1.0}, "distillation.anneal_start"),
                        ({"anneal_unlabelled": 0.5}, "distillation.anneal_unlabelled"),
                        ({"anneal": True, "teachers": "x", "anneal_unlabelled": {"gender": 2}},
                         "distillation.anneal_unlabelled.gender"),
                        ({"anneal": True, "teachers": "x", "teacher_epochs": 1}, "distillation.teacher_epochs"),
                        ({"anneal": True, "teachers": "single-task", "teacher_epochs": 0},
                         "distillation.teacher_epochs"),
                        ({"anneal": True, "teachers": "x", "teacher_training": {"optimizer": "sgd"}},
                         "distillation.teacher_training"),
                        ({"anneal": True, "teachers": "single-task", "teacher_training": {"optimizer": "lamb"}},
                         "distillation.teacher_training.optimizer"),
                        ({"anneal": True, "teachers": "single-task", "teacher_training": {"optimiser": "sgd"}},
                         "distillation.teacher_training.optimiser"),
                        ({"anneal": True, "teachers": "single-task", "teacher_training": ["sgd"]},
                         "distillation.teacher_training"),
                        ({"anneal": True, "teachers": "single-task", "teacher_epochs": 2, "teacher_training": "epochs"},
                         "distillation.teacher_training"),
                        ({"anneal": True, "teachers": "single-task", "teacher_epochs": 2,
                          "teacher_training": {"epochs": 3}}, "distillation.teacher_training.epochs"),
                        ({"anneal": True, "teachers": "x", "teacher_model": {"input_shape": [16, 16, 3]}},
                         "distillation.teacher_model"),
                        ({"anneal": True, "teachers": "single-task", "teacher_model": {"input_size": 16}},
                         "distillation.teacher_model.input_size"),
                        ({"anneal": True, "teachers": "single-task", "teacher_model": 16},
                         "distillation.teacher_model"),
                        ({"anneal": True, "teachers": "x", "teacher_views": "mirror"}, "distillation.teacher_views"),
                        ({"anneal": True, "teachers": {"gender": []}}, "distillation.teachers.gender"),
                        ({"anneal": True, "teachers": {"gender": ["a.keras", 3]}}, "distillation.teachers.gender"),
                        ({"teacher_views": "flip"}, "distillation.teacher_views")):
        with pytest.raises(ConfigError, match=rf"'{key}'"):
            train_run({**cfg, "distillation": change}, tmp_path / "bad", verbose=0)


def test_several_teachers_of_a_task_answer_their_mean_and_disagree_in_the_spread(tmp_path):
    tasks = resolve_tasks(["age", "expression"])
    src = make_source("synthetic:lab?n=16")
    keras.utils.set_random_seed(4)
    ages = [build_model(resolve_tasks(["age"]), input_shape=(32, 32, 3), widths=(4,), depths=1) for _ in range(3)]
    expression = tiny_model(["expression"], seed=5)
    teacher = EnsembleTeacher({"age": ages, "expression": expression}, [(False, 1.0, 0.0, 0.0)])
    assert teacher.tasks == ["age", "expression"] and len(teacher.model_list) == 4
    assert teacher.input_sizes() == {(32, 32): ["age"], (64, 64): ["expression"]}  # each task once
    x = np.random.default_rng(0).random((5, 32, 32, 3)).astype("float32")
    mean, spread = teacher(x, ["age"])["age"]
    each = np.stack([m(x, training=False).numpy() for m in ages])
    np.testing.assert_allclose(mean, each.mean(0), atol=1e-5)
    np.testing.assert_allclose(spread, each.std(0).reshape(5), atol=1e-5)  # one view: the models' disagreement
    # from a config: {task: [model path, ...]}; the student learns the average of the teachers' answers
    paths = []
    for i, m in enumerate(ages[:2]):
        m.save(tmp_path / f"age{i}.keras")
        paths.append(str(tmp_path / f"age{i}.keras"))
    cfg = {"tasks": ["age", "expression"], "sources": ["synthetic:lab?n=16", "synthetic:portraits?n=16"],
           "model": {"input_shape": [32, 32, 3], "widths": [4], "depths": [1], "embedding_dim": 8},
           "training": {"epochs": 1, "steps_per_epoch": 1, "batch_size": 8},
           "distillation": {"anneal": True, "teachers": {"age": paths}}}
    train_run(cfg, tmp_path / "student", verbose=0)
    with np.load(tmp_path / "student" / "teacher_targets.npz") as targets:
        answers = targets["portraits-train/age"]
    images = next(iter(make_dataset([make_source("synthetic:portraits?n=16")], tasks, batch_size=16,
                                    image_size=(32, 32), training=False)))[0]
    np.testing.assert_allclose(answers, (ages[0](images, training=False) + ages[1](images, training=False)) / 2,
                               atol=1e-5)
    ages.append(build_model(resolve_tasks(["age"]), input_shape=(16, 16, 3), widths=(4,), depths=1))
    with pytest.raises(ValueError, match=r"^models\.age: expected one model or a list of models of one input size"):
        EnsembleTeacher({"age": ages})


def test_teachers_answer_at_their_own_input_size(tmp_path):
    tasks = resolve_tasks(["age", "expression"])
    src = make_source("synthetic:lab?n=16")
    keras.utils.set_random_seed(2)
    small = build_model(resolve_tasks(["age"]), input_shape=(32, 32, 3), widths=(4,), depths=1)
    same = tiny_model(["expression"], seed=3)  # the student's size
    annealing = TeacherAnnealing([src], tasks, {"age": small, "expression": same}, verbose=0)
    entry = annealing.teach((64, 64))
    assert entry["teacher_sizes"] == {"age": [32, 32], "expression": [64, 64]}
    for teacher, size, task in ((small, (32, 32), "age"), (same, (64, 64), "expression")):
        images = next(iter(make_dataset([src], tasks, batch_size=16, image_size=size, training=False)))[0]
        np.testing.assert_allclose(annealing.pseudo_labels.values["lab-train"][task].numpy(),
                                   teacher.predict(images, verbose=0), atol=1e-5)
    assert "teacher_sizes" not in TeacherAnnealing([src], tasks, {"expression": same}, verbose=0).teach((64, 64))
    # a run's file source is decoded at the student's size; the teacher reads the files again at its own
    rng = np.random.default_rng(0)
    for i in range(6):
        write_png(tmp_path / "faces" / ("happy", "sad")[i % 2] / f"{i}.png", rng.integers(0, 256, (40, 40, 3)))
    files = make_source(f"folder:{tmp_path / 'faces'}")
    [cached] = cached_sources([files], (64, 64))
    expression = resolve_tasks(["expression"])
    teacher = build_model(expression, input_shape=(32, 32, 3), widths=(4,), depths=1)
    annealing = TeacherAnnealing([cached], expression, {"expression": teacher}, verbose=0)
    annealing.teach((64, 64))
    direct = next(iter(make_dataset([files], expression, batch_size=8, image_size=(32, 32), training=False)))[0]
    np.testing.assert_allclose(annealing.pseudo_labels.values[files.name]["expression"].numpy(),
                               teacher.predict(direct, verbose=0), atol=1e-5)
