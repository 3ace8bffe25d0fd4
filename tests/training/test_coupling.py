import json

import keras
import numpy as np
import pytest

from kfacemtl.training.coupling import (DU_2014, CoAnnotation, DistributionMatching, OutputFusion, Relatedness,
                                        make_coupling, make_relations)
from kfacemtl.data.batch import MaskedWeights
from kfacemtl.errors import ConfigError
from kfacemtl.models import build_model
from kfacemtl.data import make_dataset
from kfacemtl.data import make_source
from kfacemtl.data.synthetic.factors import PROTOTYPES
from kfacemtl.tasks import ACTION_UNITS, EXPRESSION_CLASSES, get_task, resolve_tasks
from kfacemtl.training import compile_model, train_run

EXPR, AUS, VA = get_task("expression"), get_task("action_units"), get_task("valence_arousal")


def aus_of(*names):
    v = np.zeros(len(ACTION_UNITS), "float32")
    v[[ACTION_UNITS.index(a) for a in names]] = 1
    return v


def test_du_2014_table_on_the_models_action_units():
    rel = Relatedness.du_2014(EXPR, AUS)
    assert rel.dropped == ("AU10", "AU11", "AU24")  # in Du et al.'s table, not among the 14 modelled AUs
    assert rel.value("fear", "AU20") == 1.0 and rel.value("fear", "AU5") == 0.63 and rel.value("sad", "AU17") == 0.67
    assert rel.value("angry", "AU23") == 0.29 and rel.value("surprise", "AU5") == 0.66
    assert np.all(rel.matrix[EXPRESSION_CLASSES.index("neutral")] == 0) and rel.known.all()
    # every listed value of the table that the model has is in the matrix, nothing else is
    expected = sum(1 for row in DU_2014.values() for au in row if au in ACTION_UNITS)
    assert np.count_nonzero(rel.matrix) == expected
    eight = get_task("expression").__class__("expression", "classification",
                                               classes=EXPRESSION_CLASSES + ("contempt",))
    assert Relatedness.du_2014(eight, AUS).known.tolist() == [True] * 7 + [False]  # contempt: not in the table


def test_inverse_recovers_each_expression_from_its_prototypical_aus():
    rel = Relatedness.du_2014(EXPR, AUS)
    for name, row in DU_2014.items():
        prototypical = [au for au, p in row.items() if p == 1.0 and au in ACTION_UNITS]
        p = np.asarray(rel.inverse(aus_of(*prototypical)[None]))[0]
        assert EXPRESSION_CLASSES[int(np.argmax(p))] == name, (name, p.round(2))
        assert abs(p.sum() - 1) < 1e-5
    forward = np.asarray(rel.forward(np.eye(7, dtype="float32")))
    np.testing.assert_allclose(forward, rel.matrix, atol=1e-6)


def test_estimate_from_data_with_both_labels_finds_the_generators_prototypes():
    lab = make_source("synthetic:lab?n=1500&seed=3")
    rel = Relatedness.estimate([lab, make_source("synthetic:webcam?n=20")], EXPR, AUS)
    assert "1500 rows of lab-train" in rel.origin  # webcam labels no AUs: not counted
    for e, name in enumerate(EXPRESSION_CLASSES):
        for k, au in enumerate(ACTION_UNITS):
            # the renderer: a prototypical AU is present 85 % of the time, any AU appears spuriously 4 % of the time
            truth = 0.85 + 0.15 * 0.04 if au in PROTOTYPES.get(name, ()) else 0.04
            assert abs(rel.matrix[e, k] - truth) < 0.09, (name, au, rel.matrix[e, k])
    with pytest.raises(ValueError, match="^table: estimate needs training rows labelled for both expression and action_units"):
        Relatedness.estimate([make_source("synthetic:webcam?n=20")], EXPR, AUS)
    va = Relatedness.estimate([make_source("synthetic:affect?n=600")], EXPR, VA)
    assert va.value("happy", "valence") > 0.3 > -0.3 > va.value("sad", "valence")
    with pytest.raises(ValueError, match="only a multilabel target"):
        va.inverse(np.zeros((1, 2)))


def test_coannotation_fills_only_missing_labels_from_real_ones():
    rel = Relatedness.du_2014(EXPR, AUS)
    co = CoAnnotation([rel], weight=0.4)
    happy_aus = aus_of("AU6", "AU12", "AU25")
    labels = {"expression": np.array([3, 0, 0, 5]), "action_units": np.stack([np.zeros(14), happy_aus,
                                                                              aus_of("AU1"), np.zeros(14)]).astype("float32")}
    weights = {"expression": np.array([1, 0, 1, 0], "float32"), "action_units": np.array([0, 1, 1, 0], "float32")}
    new, w, real, _ = co.apply(labels, weights)
    np.testing.assert_allclose(new["action_units"][0], rel.matrix[3])          # expression -> soft AUs
    assert int(np.argmax(new["expression"][1])) == 3                           # AUs -> soft expression
    np.testing.assert_array_equal(new["expression"][2], np.eye(7)[0])          # real labels untouched (one-hot)
    np.testing.assert_array_equal(new["action_units"][2], aus_of("AU1"))
    np.testing.assert_allclose(w["action_units"], [0.4, 1, 1, 0])
    np.testing.assert_allclose(w["expression"], [1, 0.4, 1, 0])                # row 3: nothing to read from
    assert weights["action_units"][0] == 0                                     # the inputs are not modified
    forward_only, w2, _, _ = CoAnnotation([rel], inverse=False).apply(labels, weights)
    np.testing.assert_array_equal(real["action_units"], [0, 1, 1, 0])                 # which labels are real
    assert forward_only["expression"].shape == (4,) and w2["expression"][1] == 0


def test_coannotated_batches_and_pseudo_labels_share_one_label_structure():
    from kfacemtl.training.distillation import PseudoLabels
    tasks = resolve_tasks(["expression", "action_units"])
    lab, webcam = make_source("synthetic:lab?n=8"), make_source("synthetic:webcam?n=8")
    co = CoAnnotation(make_relations(None, tasks))
    store = PseudoLabels([webcam], tasks)
    store.assign("webcam-train", "expression", np.eye(7)[np.zeros(8, int)], np.full(8, 0.5))  # webcam has real ones
    ds = make_dataset([lab, webcam], tasks, batch_size=16, image_size=(16, 16), augment=False,
                      coannotation=co, pseudo_labels=store)
    _, y, masked = next(iter(ds))
    w = masked.weights
    assert y["expression"].shape == (16, 7) and y["action_units"].shape == (16, 14)
    assert set(np.round(w["action_units"].numpy(), 3)) == {1.0, 0.5}  # lab's real AUs; webcam's co-annotated
    assert np.all(w["expression"].numpy() == 1.0)
    # which AU labels are real travels along, so distribution matching still covers the co-annotated rows
    np.testing.assert_array_equal(masked.real["action_units"].numpy(), w["action_units"].numpy() == 1.0)


def test_distribution_matching_loss_is_masked_bce_against_the_implied_distribution():
    rel = Relatedness.du_2014(EXPR, AUS)
    dm = DistributionMatching([rel], weight=2.0)
    rng = np.random.default_rng(0)
    p_expr = rng.dirichlet(np.ones(7), 4).astype("float32")
    p_au = rng.uniform(0.05, 0.95, (4, 14)).astype("float32")
    w = {"expression": np.array([1, 1, 0, 0], "float32"), "action_units": np.array([1, 0, 0, 1], "float32")}
    terms = dm.terms({"expression": p_expr, "action_units": p_au}, w)
    q = (p_expr @ rel.matrix)
    bce = -np.mean(q * np.log(p_au) + (1 - q) * np.log(1 - p_au), axis=1)
    assert float(terms["match_action_units"]) == pytest.approx(bce[[1, 2]].mean(), rel=1e-4)  # rows without AU labels
    q_expr = np.asarray(rel.inverse(p_au))
    ce = -np.sum(q_expr * np.log(p_expr), axis=1)
    assert float(terms["match_expression"]) == pytest.approx(ce[[2, 3]].mean(), rel=1e-4)
    total, _ = dm.total({"expression": p_expr, "action_units": p_au}, w)
    assert float(total) == pytest.approx(2.0 * (bce[[1, 2]].mean() + ce[[2, 3]].mean()), rel=1e-4)
    all_labelled = {k: np.ones(4, "float32") for k in w}
    assert float(dm.total({"expression": p_expr, "action_units": p_au}, all_labelled)[0]) == 0.0
    real = {"action_units": w["action_units"], "expression": w["expression"]}  # every row labelled, some co-annotated
    assert float(dm.total({"expression": p_expr, "action_units": p_au}, all_labelled, real)[0]) == pytest.approx(
        float(total))


def test_matching_trains_the_heads_on_rows_without_labels():
    keras.utils.set_random_seed(0)
    tasks = resolve_tasks(["expression", "action_units"])
    model = compile_model(build_model(tasks, input_shape=(16, 16, 3), widths=(8,), depths=1, embedding_dim=16,
                                      head_units=0, dropout=0.0), learning_rate=0.01)
    model.set_matching(DistributionMatching(make_relations(None, tasks)))
    x = np.random.default_rng(0).uniform(0, 1, (32, 16, 16, 3)).astype("float32")
    y = {"expression": np.full(32, 3), "action_units": np.zeros((32, 14), "float32")}
    sw = {"expression": np.ones(32, "float32"), "action_units": np.zeros(32, "float32")}  # every face happy, no AU label
    before = [v.numpy().copy() for v in (model.get_layer("expression").kernel, model.get_layer("action_units").kernel)]
    history = model.fit(x, y, sample_weight=sw, epochs=80, batch_size=32, verbose=0)
    match = history.history["match_action_units"]
    assert match[-1] < 0.4 * match[0]  # the AU head learnt the AUs that happy implies, from no AU label at all
    p_au = model.predict(x[:4], verbose=0)[1]
    assert np.all(p_au[:, ACTION_UNITS.index("AU12")] > 0.7) and np.all(p_au[:, ACTION_UNITS.index("AU9")] < 0.3)
    assert "match_expression" in history.history  # logged, though every row has an expression label (term 0)
    assert np.all(np.asarray(history.history["match_expression"]) == 0)
    moved = [not np.allclose(b, v.numpy()) for b, v in zip(before, (model.get_layer("expression").kernel,
                                                                    model.get_layer("action_units").kernel))]
    assert moved == [True, True]


@pytest.mark.parametrize("stop_gradient", [False, True])
def test_stop_gradient_keeps_the_given_head_out_of_the_matching_gradient(stop_gradient):
    import tensorflow as tf
    tasks = resolve_tasks(["expression", "action_units"])
    model = build_model(tasks, input_shape=(16, 16, 3), widths=(8,), depths=1, embedding_dim=16)
    dm = DistributionMatching(make_relations(None, tasks), inverse=False, stop_gradient=stop_gradient)
    x = np.random.default_rng(1).uniform(0, 1, (8, 16, 16, 3)).astype("float32")
    heads = [model.get_layer("expression").kernel, model.get_layer("action_units").kernel]
    with tf.GradientTape() as tape:
        p_expr, p_au = model(x)
        total, _ = dm.total({"expression": p_expr, "action_units": p_au},
                            {"expression": np.ones(8, "float32"), "action_units": np.zeros(8, "float32")})
    g_expr, g_au = tape.gradient(total, heads)
    assert float(tf.reduce_sum(tf.abs(g_au))) > 0
    assert (g_expr is None or float(tf.reduce_sum(tf.abs(g_expr))) == 0) == stop_gradient


def _bce(t, p):
    return -np.mean(t * np.log(p) + (1 - t) * np.log(1 - p), axis=-1)


def test_class_level_matching_constrains_class_means_not_rows():
    import tensorflow as tf
    rel = Relatedness.du_2014(EXPR, AUS)
    rng = np.random.default_rng(0)
    p_expr = rng.dirichlet(np.ones(7), 6).astype("float32")
    p_au = rng.uniform(0.05, 0.95, (6, 14)).astype("float32")
    w = {"expression": np.ones(6, "float32"), "action_units": np.array([1, 1, 0, 0, 0, 0], "float32")}
    dm = DistributionMatching([rel], level="class", inverse=False)
    term = float(dm.terms({"expression": p_expr, "action_units": p_au}, w)["match_action_units"])
    g = p_expr[2:] * rel.known / (p_expr[2:] * rel.known).sum(1, keepdims=True)   # rows without AU labels
    means, totals = g.T @ p_au[2:] / g.sum(0)[:, None], g.sum(0)
    assert term == pytest.approx(float((totals * _bce(rel.matrix, means)).sum() / totals.sum()), rel=1e-4)
    # two happy faces, AU6 on in one and off in the other: their mean is happy's AU6 rate (0.51), so the class
    # level asks nothing of either row, while the sample level pulls both towards 0.51
    happy = np.eye(7, dtype="float32")[[3, 3]]
    p = np.tile(rel.matrix[3].clip(0.05, 0.95), (2, 1)).astype("float32")
    au6 = ACTION_UNITS.index("AU6")
    p[:, au6] = [0.9, 0.12]
    grads = {}
    for level in ("class", "sample"):
        v = tf.Variable(p)
        with tf.GradientTape() as tape:
            t = DistributionMatching([rel], level=level, inverse=False).terms(
                {"expression": happy, "action_units": v}, {"expression": np.ones(2, "float32"),
                                                           "action_units": np.zeros(2, "float32")})
        grads[level] = tape.gradient(t["match_action_units"], v).numpy()[:, au6]
    assert np.abs(grads["class"]).max() < 0.05 * np.abs(grads["sample"]).max()
    assert grads["sample"][0] > 0 > grads["sample"][1]  # the sample level: AU6 down in one face, up in the other
    # class level: only the AU head learns from the forward terms (the groups are constant)
    pe = tf.Variable(p_expr)
    with tf.GradientTape() as tape:
        t = dm.terms({"expression": pe, "action_units": tf.constant(p_au)}, w)["match_action_units"]
    assert tape.gradient(t, pe) is None
    with pytest.raises(ValueError, match=r"^level: expected one of \('sample', 'class'\), got 'batch'"):
        DistributionMatching([rel], level="batch")


def test_class_level_coannotation_moves_filled_rows_to_class_means():
    rel = Relatedness.du_2014(EXPR, AUS)
    co = CoAnnotation([rel], weight=0.4, level="class")
    labels = {"expression": np.array([3, 3, 0, 5]),
              "action_units": np.stack([np.zeros(14), np.zeros(14), aus_of("AU1"), np.zeros(14)]).astype("float32")}
    weights = {"expression": np.array([1, 1, 1, 0], "float32"), "action_units": np.array([0, 0, 1, 0], "float32")}
    new, w, _, coannotated = co.apply(labels, weights)
    np.testing.assert_allclose(coannotated["action_units"], [1, 1, 0, 0])
    np.testing.assert_allclose(w["action_units"], [0.4, 0.4, 1, 0])   # the labels are filled as at the sample level
    kept, moved = co.split(w, coannotated)
    np.testing.assert_allclose(kept["action_units"], [0, 0, 1, 0])    # out of the per-row AU loss
    np.testing.assert_allclose(moved["action_units"], [0.4, 0.4, 0, 0])
    p_au = np.random.default_rng(0).uniform(0.05, 0.95, (4, 14)).astype("float32")
    term = co.class_terms(new, {"expression": None, "action_units": p_au}, moved)["coannot_action_units"]
    mean = p_au[:2].mean(0)                                             # the two happy rows' mean prediction
    assert float(term) == pytest.approx(0.4 * float(_bce(rel.matrix[3], mean)), rel=1e-4)
    assert co.term_names == ["coannot_action_units"] and CoAnnotation([rel]).term_names == []
    _, _, _, sample_coannotated = CoAnnotation([rel]).apply(labels, weights)
    assert sample_coannotated == {}


def test_class_level_coupling_trains_the_au_head_from_expression_labels():
    import tensorflow as tf
    keras.utils.set_random_seed(0)
    tasks = resolve_tasks(["expression", "action_units"])
    model = compile_model(build_model(tasks, input_shape=(16, 16, 3), widths=(8,), depths=1, embedding_dim=16,
                                      head_units=0, dropout=0.0), learning_rate=0.01)
    co = CoAnnotation(make_relations(None, tasks), level="class")
    model.set_coannotation(co)
    x = np.random.default_rng(0).uniform(0, 1, (32, 16, 16, 3)).astype("float32")
    y, w, real, coannotated = co.apply({"expression": np.full(32, 3), "action_units": np.zeros((32, 14), "float32")},
                                       {"expression": np.ones(32, "float32"),
                                        "action_units": np.zeros(32, "float32")})  # all happy
    ds = tf.data.Dataset.from_tensor_slices((x, y, MaskedWeights(w, real, coannotated))).batch(32)
    history = model.fit(ds, epochs=60, verbose=0).history
    assert history["coannot_action_units"][-1] < 0.5 * history["coannot_action_units"][0]
    assert history["action_units_loss"][-1] == 0  # the co-annotated rows left the per-row AU loss
    p_au = model.predict(x, verbose=0)[1].mean(0)
    assert p_au[ACTION_UNITS.index("AU12")] > 0.7 and p_au[ACTION_UNITS.index("AU9")] < 0.3
    model.set_coannotation(CoAnnotation(make_relations(None, tasks)))  # the sample level needs nothing of the model
    assert model.coannotation is None


def test_matching_composes_with_a_weighting_strategy():
    tasks = resolve_tasks(["expression", "action_units"])
    model = compile_model(build_model(tasks, input_shape=(16, 16, 3), widths=(8,), depths=1, embedding_dim=16),
                          weighting="dwa")
    model.set_matching(DistributionMatching(make_relations(None, tasks)))
    ds = make_dataset([make_source("synthetic:webcam?n=16")], tasks, batch_size=8, image_size=(16, 16))
    logs = model.fit(ds, epochs=2, steps_per_epoch=2, verbose=0).history
    assert logs["match_action_units"][-1] > 0 and "weight_expression" in logs and np.isfinite(logs["loss"]).all()
    co = CoAnnotation(make_relations(None, tasks), level="class")  # the class level's terms join the weighted total
    model.set_coannotation(co)
    ds = make_dataset([make_source("synthetic:webcam?n=16")], tasks, batch_size=8, image_size=(16, 16),
                      coannotation=co)
    logs = model.fit(ds, epochs=1, steps_per_epoch=2, verbose=0).history
    assert logs["coannot_action_units"][-1] > 0 and logs["action_units_loss"][-1] == 0  # webcam: no real AU label
    assert np.isfinite(logs["loss"]).all()


def test_config_errors_name_the_key():
    tasks = resolve_tasks(["expression", "action_units", "gender"])
    with pytest.raises(ConfigError, match=r"coupling.relations\[0\].target.*'smile' is not a task"):
        make_relations([{"source": "expression", "target": "smile"}], tasks)
    with pytest.raises(ConfigError, match="source of a relation must be a classification"):
        make_relations([{"source": "action_units", "target": "expression"}], tasks)
    with pytest.raises(ConfigError, match=r"table.happy.AU99.*not a label"):
        make_relations([{"source": "expression", "target": "action_units", "table": {"happy": {"AU99": 1}}}], tasks)
    with pytest.raises(ConfigError, match=r"relations\[0\].table.*expected one of"):
        make_relations([{"source": "expression", "target": "action_units", "table": "ekman"}], tasks)
    with pytest.raises(ValueError, match=r"^table: expected a mapping"):  # the class itself: plain errors
        Relatedness.from_table({}, tasks[0], tasks[1])
    with pytest.raises(ConfigError, match=r"'coupling.relations\[0\].table.happy': not a class"):
        make_relations([{"source": "gender", "target": "action_units", "table": {"happy": {"AU12": 1}}}], tasks)
    with pytest.raises(ConfigError, match=r"'coupling.matching_weight': expected a number > 0"):
        make_coupling({"coannotation": False, "distribution_matching": True, "relations": None,
                       "coannotation_weight": 0.5, "matching_weight": 0, "inverse": True, "stop_gradient": False},
                      tasks)
    with pytest.raises(ConfigError, match="need a relation"):
        make_coupling({"coannotation": True, "distribution_matching": False, "relations": [],
                       "coannotation_weight": 0.5, "matching_weight": 1.0, "inverse": True, "stop_gradient": False},
                      tasks)
    from kfacemtl.training.config import resolve_config
    with pytest.raises(ConfigError, match="coupling.coannotation_weight"):
        resolve_config({"sources": ["synthetic:lab?n=4"], "coupling": {"coannotation_weight": 2}})
    with pytest.raises(ConfigError, match=r"coupling.level.*expected one of \('sample', 'class'\), got 'rows'"):
        resolve_config({"sources": ["synthetic:lab?n=4"], "coupling": {"level": "rows"}})
    assert [r.name for r in make_relations(None, tasks)] == ["expression->action_units"]
    va_tasks = resolve_tasks(["expression", "valence_arousal"])
    assert make_relations(None, va_tasks) == []  # no source labels both: no mapping to estimate
    rel = make_relations([{"source": "expression", "target": "valence_arousal",
                           "table": {"happy": [0.8, 0.5], "sad": [-0.6, -0.3]}}], va_tasks)[0]
    assert rel.known.sum() == 2 and rel.value("sad", "arousal") == -0.3
    fuse = {"coannotation": False, "distribution_matching": False, "fuse_outputs": True, "coannotation_weight": 0.5,
            "matching_weight": 1.0, "inverse": True, "stop_gradient": False}
    with pytest.raises(ConfigError, match="coupling.fuse_outputs.*no relation has a multilabel target"):
        make_coupling(dict(fuse, relations=[{"source": "expression", "target": "valence_arousal",
                                             "table": {"happy": [0.8, 0.5]}}]), va_tasks)
    with pytest.raises(ConfigError, match="coupling.fuse_outputs.*two relations fuse the same output"):
        make_coupling(dict(fuse, relations=[{"source": "expression", "target": "action_units"},
                                            {"source": "gender", "target": "action_units",
                                             "table": {"female": {"AU12": 0.5}}}]), tasks)


def test_train_run_with_both_couplings_and_distillation(tmp_path):
    cfg = {
        "tasks": ["expression", "action_units", "valence_arousal"],
        "sources": ["synthetic:lab?n=48", "synthetic:webcam?n=48", "synthetic:affect?n=48"],
        "eval_sources": ["synthetic:webcam?split=test&n=16"],
        "unlabelled_sources": ["synthetic:street?n=32"],
        "model": {"input_shape": [16, 16, 3], "widths": [8, 16], "depths": [1, 1], "embedding_dim": 16},
        "training": {"epochs": 2, "steps_per_epoch": 2, "batch_size": 16, "mixing": "balanced",
                     "jit_compile": True},  # XLA, as jit_compile: auto does on a GPU
        "distillation": {"rounds": 1, "epochs_per_round": 1},
        "coupling": {"coannotation": True, "distribution_matching": True, "fuse_outputs": True,
                     "level": "class",  # the sample level trains in benchmarks/distribution_matching.py's test
                     "relations": [{"source": "expression", "target": "action_units", "table": "estimate"},
                                   {"source": "expression", "target": "valence_arousal", "table": "estimate"}]},
    }
    report = train_run(cfg, tmp_path / "run", verbose=0)
    rels = report["coupling"]["relations"]
    assert [r["target"] for r in rels] == ["action_units", "valence_arousal"]
    assert "rows of lab-train" in rels[0]["origin"] and "rows of affect-train" in rels[1]["origin"]
    metrics = report["final_epoch_metrics"]
    # webcam and affect have no real AU labels (co-annotation gives them soft ones): matched all the same
    assert metrics["match_action_units"] > 0 and metrics["match_valence_arousal"] > 0 and "match_expression" in metrics
    assert metrics["coannot_action_units"] > 0 and metrics["coannot_valence_arousal"] > 0
    assert report["coupling"]["level"] == "class"
    assert (tmp_path / "run" / "plots" / "relatedness_expression_action_units.png").stat().st_size > 0
    assert json.loads((tmp_path / "run" / "report.json").read_text())["distillation"]
    assert report["coupling"]["fused_outputs"] == ["expression->action_units"]  # valence/arousal: not multilabel
    from kfacemtl.models import load_model
    model = load_model(tmp_path / "run" / "model.keras")
    assert [(f.source, f.target) for f in model.fusions] == [("expression", "action_units")]
    again = train_run({**cfg, "training": {**cfg["training"], "epochs": 2}}, tmp_path / "run", resume=True, verbose=0)
    assert again["epochs_done"] == 2


def _logit(v):
    return np.log(v) - np.log1p(-v)


def test_output_fusion_is_a_product_of_experts_with_the_implied_labels():
    rel = Relatedness.du_2014(EXPR, AUS)
    fusion = OutputFusion.from_relation(rel)
    rng = np.random.default_rng(0)
    p_expr = rng.dirichlet(np.ones(7), size=5).astype("float32")
    p_aus = rng.uniform(0.02, 0.98, size=(5, len(ACTION_UNITS))).astype("float32")
    out = fusion.apply({"expression": p_expr, "action_units": p_aus, "gender": p_expr[:, :2]})
    q = np.clip(np.asarray(rel.forward(p_expr)), 0.05, 0.95)
    base = np.clip(rel.prior @ rel.matrix, 0.05, 0.95)
    expected = 1 / (1 + np.exp(-(_logit(p_aus) + _logit(q) - _logit(base))))
    np.testing.assert_allclose(np.asarray(out["action_units"]), expected, atol=1e-5)
    assert out["expression"] is p_expr and out["gender"] is not None  # the other outputs pass through
    # an expression head that says no more than the prior leaves the AU head as it is
    neutral = fusion.apply({"expression": np.tile(rel.prior, (5, 1)), "action_units": p_aus})["action_units"]
    np.testing.assert_allclose(np.asarray(neutral), p_aus, atol=1e-5)
    # a confident "happy" raises AU12 and lowers AU4 (frown), whatever the AU head said
    happy = fusion.apply({"expression": np.eye(7, dtype="float32")[[3] * 5], "action_units": p_aus})["action_units"]
    happy = np.asarray(happy)
    au12, au4 = ACTION_UNITS.index("AU12"), ACTION_UNITS.index("AU4")
    assert (happy[:, au12] > p_aus[:, au12]).all() and (happy[:, au4] < p_aus[:, au4]).all()
    with pytest.raises(ValueError, match="fusing outputs needs a multilabel target"):
        OutputFusion.from_relation(Relatedness.from_table({"happy": [0.8, 0.5]}, EXPR, VA))


def test_fused_outputs_only_where_the_model_answers_and_saved_with_it(tmp_path):
    import tensorflow as tf

    from kfacemtl.serving.export import export_model
    from kfacemtl.models import load_model
    tasks = resolve_tasks(["expression", "action_units"])
    model = build_model(tasks, input_shape=(16, 16, 3), widths=(4,), depths=1, embedding_dim=4, head_units=4)
    x = np.random.default_rng(1).random((4, 16, 16, 3)).astype("float32")
    raw = model.predict(x, verbose=0)
    fused_model = model.with_fusions([OutputFusion.from_relation(Relatedness.du_2014(EXPR, AUS))])
    assert isinstance(fused_model.get_layer("action_units"), OutputFusion)  # a layer of the network, after the head
    fused = fused_model.predict(x, verbose=0)
    np.testing.assert_allclose(fused[0], raw[0], atol=1e-6)  # expression: the head's own
    assert np.abs(fused[1] - raw[1]).max() > 1e-3  # AUs: fused
    fused_model.save(tmp_path / "m.keras")
    again = load_model(tmp_path / "m.keras")
    assert [(f.source, f.target) for f in again.fusions] == [("expression", "action_units")]
    np.testing.assert_allclose(again.predict(x, verbose=0)[1], fused[1], atol=1e-6)
    path = export_model(again, base=tmp_path / "exports", name="fused")
    out = tf.saved_model.load(str(path)).signatures["serving_float"](images=x)
    assert "`action_units` is the product of experts" in (path / "model_card.md").read_text()
    np.testing.assert_allclose(out["action_units_probs"].numpy(), fused[1], atol=1e-5)
    # training sees the heads themselves (training-mode outputs are random with dropout: count the fusions instead)
    calls = []

    class Counted(OutputFusion):
        def call(self, inputs, training=None):
            calls.append(bool(training))
            return super().call(inputs, training=training)

    counted = again.with_fusions([Counted.from_relation(Relatedness.du_2014(EXPR, AUS))])
    calls.clear()
    counted(x, training=True)
    counted(x, training=False)
    assert calls == [True, False]  # in training the layer passes the head through (OutputFusion's own test)
