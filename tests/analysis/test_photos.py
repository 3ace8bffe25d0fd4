"""Photos in, every answer out: inputs, per-photo statuses, batching across photos, served models, outputs."""
import json

import numpy as np
import pandas as pd
import pytest
import tensorflow as tf

from helpers import REAL_DATA, tiny_model, write_png
from kfacemtl.analysis.photos import analyze, photo_paths, write_records
from kfacemtl.analysis.annotate import write_annotated
from kfacemtl.data.alignment import align_faces
from kfacemtl.data.detection import MTCNNDetector
from kfacemtl.data.synthetic import generate

TASKS = ["age", "gender", "expression", "action_units"]


def _faces(n, seed=0):
    return generate("portraits", n, seed=seed)[0]  # 64x64 crops


def test_photo_paths_reads_folders_recursively_and_lists_and_names_a_missing_path(tmp_path):
    for name in ("a/1.jpg", "a/b/2.PNG", "a/notes.txt.bak", "c.jpeg"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "list.txt").write_text("# holiday\nc.jpeg\n\na/1.jpg\n")
    assert [p.relative_to(tmp_path).as_posix() for p in photo_paths([tmp_path / "a", tmp_path / "list.txt"])] == [
        "a/1.jpg", "a/b/2.PNG", "c.jpeg", "a/1.jpg"]
    with pytest.raises(FileNotFoundError, match="photos: '.*nowhere.jpg' is not a file or folder"):
        photo_paths([tmp_path / "nowhere.jpg"])


def test_every_photo_gets_a_status_and_good_photos_their_answers(tmp_path):
    model = tiny_model(TASKS)
    faces = _faces(3)
    for i, face in enumerate(faces):
        write_png(tmp_path / "in" / f"{i}.png", face)
    (tmp_path / "in" / "3.png").write_bytes(b"not an image at all")
    write_png(tmp_path / "in" / "4.png", np.zeros((300, 300, 3), np.uint8))  # over the pixel limit below
    records = analyze([tmp_path / "in"], model, detector="whole", photos_per_batch=2, max_pixels=200 * 200,
                      progress=False)
    assert [r["status"].split(":")[0] for r in records] == ["ok", "ok", "ok", "unreadable", "too large"]
    assert "300x300 pixels (the limit is 40,000)" in records[4]["status"] and records[3]["faces"] == []
    assert records[3]["status"] == "unreadable: not a JPEG, PNG, GIF, BMP or WebP image"  # no TensorFlow graph noise
    expected = model.predict(faces.astype("float32") / 255.0, verbose=0)  # a whole-photo crop is the photo
    for r, age, expression in zip(records, expected[0][:, 0], expected[2]):
        (face,) = r["faces"]
        assert face["box"] == [0.0, 0.0, 64.0, 64.0] and (r["width"], r["height"]) == (64, 64)
        assert abs(face["answers"]["age"] - age) < 1e-3
        np.testing.assert_allclose(face["answers"]["expression"]["probs"], expression, atol=1e-5)
        assert isinstance(face["answers"]["action_units"]["active"], str)


def test_a_saved_model_answers_as_the_keras_model_does(tmp_path):
    from kfacemtl.serving import export_model
    model = tiny_model(TASKS)
    for i, face in enumerate(_faces(2, seed=1)):
        write_png(tmp_path / "in" / f"{i}.png", face)
    version = export_model(model, tmp_path / "models", "faces", warmup=False)
    keras_records = analyze([tmp_path / "in"], model, detector="whole", progress=False)
    served = analyze([tmp_path / "in"], version, detector="whole", progress=False)
    for a, b in zip(keras_records, served):
        for task in ("gender", "expression"):
            np.testing.assert_allclose(a["faces"][0]["answers"][task]["probs"], b["faces"][0]["answers"][task]["probs"],
                                       atol=1e-4)
        assert abs(a["faces"][0]["answers"]["age"] - b["faces"][0]["answers"]["age"]) < 1e-2


def test_with_tta_keras_and_a_tta_export_answer_the_mean_over_each_face_and_its_mirror(tmp_path):
    from kfacemtl.serving import export_model
    model = tiny_model(TASKS)
    faces = _faces(3, seed=2)
    for i, face in enumerate(faces):
        write_png(tmp_path / "in" / f"{i}.png", face)
    version = export_model(model, tmp_path / "models", "faces", warmup=False, tta="flip")
    keras_records = analyze([tmp_path / "in"], model, detector="whole", progress=False, tta="flip", batch_size=2)
    served = analyze([tmp_path / "in"], version, detector="whole", progress=False)
    x = faces.astype("float32") / 255.0
    plain = model.predict(x, verbose=0)[2]
    mean = (plain + model.predict(x[:, :, ::-1], verbose=0)[2]) / 2  # expression
    assert not np.allclose(plain, mean, atol=1e-4)  # the mirror's answers are not the face's
    for a, b, expected in zip(keras_records, served, mean):
        np.testing.assert_allclose(a["faces"][0]["answers"]["expression"]["probs"], expected, atol=1e-5)
        np.testing.assert_allclose(b["faces"][0]["answers"]["expression"]["probs"], expected, atol=1e-4)
        assert abs(a["faces"][0]["answers"]["age"] - b["faces"][0]["answers"]["age"]) < 1e-2
    with pytest.raises(ValueError, match="tta: 'flip' needs a Keras model .* export it with tta"):
        analyze([tmp_path / "in"], version, detector="whole", progress=False, tta="flip")


def test_results_are_written_as_json_lines_csv_and_annotated_photos(tmp_path):
    model = tiny_model(["age", "gender"])
    write_png(tmp_path / "in" / "a.png", _faces(1)[0])
    (tmp_path / "in" / "b.png").write_bytes(b"")
    records = analyze([tmp_path / "in"], model, detector="whole", progress=False)
    paths = write_records(records, tmp_path / "out")
    lines = [json.loads(line) for line in paths["jsonl"].read_text().splitlines()]
    assert lines == json.loads(json.dumps(records))
    csv = paths["csv"].read_text().splitlines()
    assert csv[0] == "photo,status,face,x,y,width,height,score,age,gender,gender_p"
    import pandas as pd
    table = pd.read_csv(paths["csv"])
    assert table["status"].tolist()[0] == "ok" and table["status"].tolist()[1].startswith("unreadable: not a JPEG")
    assert csv[1].split(",")[1:3] == ["ok", "0"]
    written = write_annotated(records, tmp_path / "out" / "annotated")
    assert [p.name for p in written] == ["a.png"]
    drawn = tf.io.decode_png(written[0].read_bytes()).numpy()
    assert drawn.shape == (64, 64, 3) and not np.array_equal(drawn, _faces(1)[0])


def test_the_command_line_analyzes_a_folder(tmp_path, capsys):
    from kfacemtl.cli import main
    from kfacemtl.serving import export_model
    model = tiny_model(["gender"])
    model.save(tmp_path / "m.keras")
    for i, face in enumerate(_faces(2)):
        write_png(tmp_path / "in" / f"{i}.png", face)
    (tmp_path / "in" / "bad.png").write_bytes(b"\x89PNG broken")
    out = tmp_path / "out"
    assert main(["analyze", str(tmp_path / "in"), "--model", str(tmp_path / "m.keras"), "--detector", "whole",
                 "--out", str(out)]) == 0
    assert "3 photos (2 ok, 1 unreadable), 2 faces" in capsys.readouterr().out
    assert (out / "results.csv").exists() and len(list((out / "annotated").glob("*.png"))) == 2
    assert main(["analyze", str(tmp_path / "in"), "--model", str(tmp_path / "m.keras"), "--detector", "whole",
                 "--out", str(tmp_path / "flip"), "--tta", "flip", "--no-annotate"]) == 0
    plain, flip = (pd.read_csv(d / "results.csv") for d in (out, tmp_path / "flip"))
    assert plain["gender"].notna().sum() == 2 and not np.allclose(plain["gender_p"].dropna(), flip["gender_p"].dropna())
    capsys.readouterr()
    assert main(["analyze", str(tmp_path / "in"), "--model", str(tmp_path / "nowhere"), "--tta", "flip",
                 "--out", str(out)]) == 2
    assert "--model: '" in (err := capsys.readouterr().err) and "nowhere' is not a .keras file, a run folder" in err
    version = export_model(tiny_model(["gender"]), tmp_path / "models", "faces", warmup=False)
    assert main(["analyze", str(tmp_path / "in"), "--model", str(version), "--tta", "flip", "--out", str(out)]) == 2
    assert "--tta: 'flip' needs a Keras model" in capsys.readouterr().err
    assert main(["analyze", str(tmp_path / "in"), "--out", str(out)]) == 2
    assert "give either --model" in capsys.readouterr().err


def test_faces_found_in_photos_are_answered_as_their_aligned_crops(tmp_path):
    paths = sorted((REAL_DATA / "utkface" / "UTKFace").glob("*.jpg"))[:2]
    if len(paths) < 2:
        pytest.skip(f"the real data is not at {REAL_DATA} (set KFACEMTL_DATA)")
    faces = [tf.io.decode_image(tf.io.read_file(str(p)), channels=3).numpy() for p in paths]
    group = np.full((120, 200, 3), 40, np.uint8)  # two people side by side
    group[30:94, 20:84], group[40:104, 120:184] = faces
    model = tiny_model(TASKS)
    write_png(tmp_path / "group.png", group)
    write_png(tmp_path / "wall.png", np.full((100, 100, 3), 40, np.uint8))
    group_record, wall = analyze([tmp_path], model, progress=False)
    assert wall["status"] == "no face" and group_record["status"] == "ok"
    found = group_record["faces"]
    assert len(found) == 2 and found[0]["score"] >= found[1]["score"]
    assert sorted(f["box"][0] < 100 for f in found) == [False, True]  # one on each side
    landmarks = MTCNNDetector().detect([group])[0]
    crops = align_faces(group, np.stack([f.landmarks for f in landmarks]), (64, 64))
    crops = tf.round(crops * 255.0) / 255.0
    expected = model.predict(crops, verbose=0)
    for face, age in zip(found, expected[0][:, 0]):
        assert abs(face["answers"]["age"] - age) < 1e-3


def test_analyze_explains_each_face_for_the_heads_asked_and_refuses_a_served_model(tmp_path, capsys):
    from kfacemtl.cli import main
    model = tiny_model(["gender", "expression"])
    model.save(tmp_path / "m.keras")
    for i, face in enumerate(_faces(2)):
        write_png(tmp_path / "in" / f"p{i}.png", face)
    records = analyze([tmp_path / "in"], model, detector="whole", progress=False, explain_heads=["expression"],
                      explain_dir=tmp_path / "explained")
    overlays = [r["faces"][0]["explanations"]["expression"] for r in records]
    assert [p.split("/")[-1] for p in overlays] == ["0000_p0_face0_expression_saliency_overlay.png",
                                                    "0001_p1_face0_expression_saliency_overlay.png"]
    assert all(tf.io.decode_png(open(p, "rb").read()).shape[:2] == (64, 64) for p in overlays)
    with pytest.raises(ValueError, match="explain_heads: saliency maps need a Keras model"):
        analyze([tmp_path / "in"], model, detector="whole", progress=False, explain_heads=["expression"])
    assert main(["analyze", str(tmp_path / "in"), "--model", str(tmp_path / "m.keras"), "--detector", "whole",
                 "--explain", "smile", "--out", str(tmp_path / "out")]) == 2
    assert "--explain: unknown head 'smile'" in capsys.readouterr().err


def test_through_a_server_the_faces_are_cut_here_and_answered_there(tmp_path, capsys):
    from kfacemtl.cli import main
    from kfacemtl.serving import export_model
    from kfacemtl.serving.local_server import LocalModelServer
    model = tiny_model(["gender", "expression"])
    for i, face in enumerate(_faces(3, seed=2)):
        write_png(tmp_path / "in" / f"p{i}.png", face)
    export_model(model, tmp_path / "models", "faces", warmup=False)
    local = analyze([tmp_path / "in"], model, detector="whole", progress=False)
    with LocalModelServer(tmp_path / "models") as server:
        from kfacemtl.serving import Client
        with Client(server.grpc_target, "faces") as client:
            served = analyze([tmp_path / "in"], client, detector="whole", image_size=64, photos_per_batch=2,
                             progress=False)
        assert main(["analyze", str(tmp_path / "in"), "--server", server.rest_target, "--rest", "--name", "faces",
                     "--image-size", "64", "--detector", "whole", "--out", str(tmp_path / "out")]) == 0
    assert "3 photos (3 ok), 3 faces" in capsys.readouterr().out
    for a, b in zip(local, served):
        np.testing.assert_allclose(a["faces"][0]["answers"]["expression"]["probs"],
                                   b["faces"][0]["answers"]["expression"]["probs"], atol=1e-4)
    with pytest.raises(ValueError, match="image_size: needed for a served model"):
        analyze([tmp_path / "in"], client, detector="whole", progress=False)
