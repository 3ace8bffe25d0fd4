"""``python -m benchmarks.litert`` runs end to end on a tiny run (a small model, synthetic faces)."""
import pytest
import yaml

from helpers import tiny_model


@pytest.mark.e2e
def test_litert_benchmark_scores_sizes_and_times_every_variant(tmp_path, capsys):
    from benchmarks import litert
    tiny_model(seed=2).save(tmp_path / "model.keras")
    (tmp_path / "config.yaml").write_text(yaml.safe_dump({"sources": ["synthetic:portraits?n=16"],
                                                          "eval_sources": ["synthetic:portraits?split=test&n=16"]}))
    litert.main([str(tmp_path), "--seconds", "0.01"])
    lines = capsys.readouterr().out.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("variant"))
    assert "ms/image at 64" in lines[header]
    assert [line.split()[0] for line in lines[header + 2:header + 6]] == ["keras", "float32", "float16", "int8"]
    scores = next(i for i, line in enumerate(lines) if line.startswith("source"))
    assert lines[scores].split() == ["source", "task", "metric", "keras", "float32", "float16", "int8", "int8", "-",
                                     "keras"]
    assert any(line.split()[:3] == ["portraits-test", "gender", "accuracy"] for line in lines[scores + 2:])
