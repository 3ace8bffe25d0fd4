"""``python -m benchmarks.analyze_photos`` on a miniature of the LFW and ORL layouts (real faces, a tiny model)."""
import numpy as np
import pytest
import tensorflow as tf

from helpers import REAL_DATA, tiny_model, write_png


@pytest.mark.e2e
def test_analyze_photos_benchmark_prints_detection_accuracy_the_detector_and_throughput(tmp_path, capsys):
    from benchmarks import analyze_photos as bench
    faces = sorted((REAL_DATA / "utkface" / "UTKFace").glob("*.jpg"))[:3]
    if len(faces) < 3:
        pytest.skip(f"the real data is not at {REAL_DATA} (set KFACEMTL_DATA)")
    rows = ["path,expression,expression_name,identity_guess"]
    for i, path in enumerate(faces):
        face = tf.image.resize(tf.io.decode_image(tf.io.read_file(str(path)), channels=3), (200, 200)).numpy()
        photo = np.pad(face.astype(np.uint8), ((70, 80), (90, 60), (0, 0)), constant_values=100)  # 350x350
        write_png(tmp_path / "data" / "lfw_expressions" / "images" / f"p{i}.png", photo)
        rows.append(f"images/p{i}.png,{i % 2 * 3},x,p{i}")
        write_png(tmp_path / "data" / "orl_faces" / f"s{i}" / "1.png", face[::2, ::2].astype(np.uint8))
    (tmp_path / "data" / "lfw_expressions" / "labels.csv").write_text("\n".join(rows) + "\n")
    tiny_model(["expression"]).save(tmp_path / "m.keras")
    assert bench.main([str(tmp_path / "m.keras"), "--data", str(tmp_path / "data"), "--throughput-photos", "3",
                       "--photos-per-batch", "2"]) == 0
    out = capsys.readouterr().out
    assert "LFW photos (350x350)  3       3            100.0%" in out and "ORL (92x112)" in out
    assert "through analyze (detected, aligned; 0 without a face count as wrong)" in out
    assert "min_face_size" in out and "one photo at a time" in out and "2 photos per batch" in out
