"""A .keras file saved by kfacemtl 0.1 (one flat graph; tests/models/fixtures, written by that release's code) loads
into today's model with the same answers."""
from pathlib import Path

import keras
import numpy as np
import pytest

from kfacemtl.models import MultiTaskModel, OutputFusion, VGGBackbone, load_model

FIXTURES = Path(__file__).parent / "fixtures"


def test_a_model_saved_by_kfacemtl_0_1_loads_with_its_answers(tmp_path):
    model = load_model(FIXTURES / "kfacemtl-0.1.keras")
    assert isinstance(model, MultiTaskModel) and isinstance(model.backbone, VGGBackbone)
    assert model.backbone.widths == (8, 16) and model.backbone.depths == (1, 2)
    assert [(f.source, f.target) for f in model.fusions] == [("expression", "action_units")]
    assert isinstance(model.get_layer("action_units"), OutputFusion)
    with np.load(FIXTURES / "kfacemtl-0.1-answers.npz") as saved:
        saved = dict(saved)
    answers = model.predict(saved["x"], verbose=0)
    for name, out in zip(model.output_names, answers):
        np.testing.assert_allclose(out, saved[name], atol=1e-6)
    assert model.loss[0].normalization == "mean_with_sample_weight" and model.compiled
    model.save(tmp_path / "today.keras")  # and it saves in today's format
    again = load_model(tmp_path / "today.keras")
    for a, b in zip(answers, again.predict(saved["x"], verbose=0)):
        np.testing.assert_allclose(a, b, atol=1e-6)
    with pytest.raises(ValueError, match="kfacemtl.load_model"):  # Keras's own loader says what to use
        keras.saving.load_model(FIXTURES / "kfacemtl-0.1.keras")
