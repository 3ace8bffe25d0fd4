"""``python -m benchmarks.throughput`` runs end to end on small data (tiny models, few steps)."""
import json

import pytest

from helpers import TINY_MODEL


@pytest.mark.e2e
def test_throughput_benchmark_times_pipeline_cache_and_model_alone(tmp_path, capsys):
    from benchmarks import throughput as bench
    common = ["--setting", "synthetic", "--synthetic-faces", "64", "--steps", "3", "--warmup", "1",
              "--model", json.dumps(TINY_MODEL)]
    assert bench.main(common + ["--one", "alone_mixed"]) == 0  # what each fresh process of a full run does
    child = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert child["images_per_s"] > 0 and child["dataset_seconds"] >= 0 and child["peak_rss_mb"] > 0
    assert child["gpu_peak_mb"] is None  # no GPU here
    assert bench.main(common + ["--repeats", "1", "--in-process", "--out", str(tmp_path / "tp"),
                                "--variants", "files,cached,alone", "--batch-size", "16"]) == 0
    out = capsys.readouterr().out
    assert "full pipeline (decoded-image cache)" in out and "model-FLOP utilisation" in out
    assert "mixed_float16 (model.mixed_precision)  not measured" in out and "full pipeline, XLA" in out
    r = json.loads((tmp_path / "tp" / "results.json").read_text())["synthetic"]
    assert set(r["runs"]) == {"files", "cached", "alone"} and all(len(v) == 1 for v in r["runs"].values())
    assert r["input_shape"] == TINY_MODEL["input_shape"] and r["forward_flops_per_image"] > 0
    assert r["batch_size"] == 16 and r["precision"] == "float32" and "float32 matmul peak (2048^3)" in out
    assert 0 < r["model_flop_utilisation"] < 1 and r["inference_images_per_s"] > 0 and r["peak_rss_mb"] > 0
    assert bench.main(["--setting", "real", "--data", str(tmp_path / "none")]) == 0  # no real data: a message
    assert "real data not found" in capsys.readouterr().out


@pytest.mark.e2e
def test_throughput_variants_are_a_base_and_tags_and_compare_in_one_process(capsys):
    import doctest

    from benchmarks import throughput as bench
    assert doctest.testmod(bench, optionflags=doctest.NORMALIZE_WHITESPACE).failed == 0
    assert bench.parse_variant("cached_xla_step_dev_spe8") == {
        "base": "cached", "xla": True, "mixed": False, "step": True, "dev": True, "steps_per_execution": 8}
    for bad in ("cache", "cached_fast", "alone_spe0", "alone_spe2_spe4"):
        with pytest.raises(ValueError, match="expected files, cached or alone"):
            bench.parse_variant(bad)
    common = ["--setting", "synthetic", "--synthetic-faces", "64", "--steps", "3", "--warmup", "1",
              "--model", json.dumps(TINY_MODEL), "--batch-size", "16"]
    assert bench.main(common + ["--one", "alone_step_spe2,cached_step_spe2,cached_dev"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    rows = [json.loads(line) for line in lines if line.startswith("{")]
    assert [r["variant"] for r in rows] == ["alone_step_spe2", "cached_step_spe2", "cached_dev"]
    assert all(r["images_per_s"] > 0 for r in rows)
    table = "\n".join(lines)
    assert "% of alone_step_spe2" in table and "2 steps per call" in table and "augmented in the train step" in table
    with pytest.raises(SystemExit):
        bench.main(common + ["--one", "alone,fast"])


def test_throughput_step_clock_leaves_the_warm_up_steps_out():
    from benchmarks.throughput import StepClock
    now = [0.0]
    clock = StepClock(skip=2, clock=lambda: now[0])  # a clock the test moves: no wall time in the verdict
    for batch, seconds in enumerate([0.3, 0.3, 0.01, 0.02, 0.04]):  # two slow warm-up steps (tracing), three timed
        clock.on_train_batch_begin(batch)
        now[0] += seconds
        clock.on_train_batch_end(batch)
    assert clock.seconds == pytest.approx(0.07)
