import numpy as np
import pytest

from kfacemtl.errors import ConfigError, LabelError
from kfacemtl.tasks import ACTION_UNITS, EXPRESSION_CLASSES, Task, get_task, resolve_tasks


def test_builtin_conventions_follow_the_data_readme():
    assert get_task("gender").classes == ("male", "female")
    assert get_task("race").classes == ("white", "black", "asian", "indian", "others")
    assert get_task("expression").classes == EXPRESSION_CLASSES
    assert EXPRESSION_CLASSES[3] == "happy" and EXPRESSION_CLASSES[6] == "neutral"
    assert get_task("expression", contempt=True).classes[7] == "contempt"
    assert get_task("action_units").classes == ACTION_UNITS and get_task("action_units").kind == "multilabel"
    va = get_task("valence_arousal")
    assert va.value_range == (-1.0, 1.0) and va.output_dim == 2
    assert get_task("identity", classes=40).output_dim == 40


def test_custom_task_round_trips_through_config():
    t = Task("smile", "classification", classes=["no", "yes"])
    assert Task.from_config(t.to_config()) == t
    assert resolve_tasks({"smile": {"kind": "classification", "classes": ["no", "yes"]}})[0] == t


@pytest.mark.parametrize("spec,key", [
    ({"smile": {"classes": ["a", "b"]}}, "tasks.smile"),
    ({"smile": {"kind": "blob"}}, "tasks.smile.kind"),
    ({"age": {"valeu_range": [0, 1]}}, "tasks.age.valeu_range"),
    ({"identity": {}}, "tasks.identity.classes"),
])
def test_bad_task_specs_name_the_key(spec, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        resolve_tasks(spec)


def test_a_task_built_in_python_names_the_bad_argument():
    with pytest.raises(ValueError, match=r"^kind: expected one of \('classification', "):
        Task("smile", "blob")
    with pytest.raises(ValueError, match=r"^value_range: expected \[low, high\] with low < high"):
        Task("score", "regression", value_range=(1, 0))
    with pytest.raises(ValueError, match="^classes: identity needs its number of people"):
        get_task("identity")


def test_check_labels_rejects_out_of_range_and_nan_naming_the_row():
    g = get_task("gender")
    with pytest.raises(LabelError, match=r"row b\.png.*'gender' label 2\.0.*\[0, 1\]"):
        g.check_labels(np.array([0, 2]), np.array([True, True]), ["a.png", "b.png"], "source s")
    with pytest.raises(LabelError, match="row 1.*NaN"):
        get_task("age").check_labels(np.array([[3.0], [np.nan]]), np.array([True, True]), ["0", "1"], "s")
    with pytest.raises(LabelError, match="outside the range"):
        get_task("valence_arousal").check_labels(np.array([[0.0, 1.5]]), np.array([True]), ["0"], "s")
    # a missing row may hold anything: it is replaced by a finite placeholder
    out = g.check_labels(np.array([np.nan, 1]), np.array([False, True]), ["0", "1"], "s")
    assert out.tolist() == [0, 1]
    age = get_task("age").check_labels(np.array([[np.inf], [30]]), np.array([False, True]), ["0", "1"], "s")
    assert np.all(np.isfinite(age)) and age[1, 0] == 30
