"""Helpers the tests share: where the repository and the real data are, PNG files, tiny models, the real datasets'
layouts in miniature."""
import os
import socket
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
REAL_DATA = Path(os.environ.get("KFACEMTL_DATA", ROOT.parent / "shared" / "data"))


def write_png(path, array):
    """Write a uint8 (H, W, C) array as PNG with TF's own encoder."""
    import tensorflow as tf
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(tf.io.encode_png(np.asarray(array, dtype="uint8")).numpy())
    return path


TINY = dict(widths=(8, 16), depths=1, embedding_dim=16, head_units=8)  # a backbone that builds and runs in ms


def tiny_model(tasks=None, seed=0):
    """A small untrained kfacemtl model over ``tasks`` (default every built-in face task)."""
    import keras

    from kfacemtl.models import build_model
    from kfacemtl.tasks import resolve_tasks
    keras.utils.set_random_seed(seed)
    return build_model(resolve_tasks(tasks), **TINY)


TINY_MODEL = {"input_shape": [24, 24, 3], "widths": [8, 16], "depths": [1, 1], "embedding_dim": 16, "head_units": 8}


def real_layout(data):
    """40 UTKFace chips, FER2013's train/test folders, an LFW-expressions manifest and CK+ with action units, in
    miniature, under ``data``."""
    rng = np.random.default_rng(0)
    for i in range(40):
        age, gender, race = 10 + i, i % 2, i % 5
        write_png(data / "utkface" / "UTKFace" / f"{age}_{gender}_{race}_2017011600000{i:04d}.jpg.chip.jpg",
                  rng.integers(0, 255, (64, 64, 3)))
    for split, n in (("train", 6), ("test", 2)):
        for cls in ("angry", "happy", "neutral"):
            for k in range(n):
                write_png(data / "fer2013" / split / cls / f"{split}_{k}.jpg", rng.integers(0, 255, (48, 48, 1)))
    rows = ["path,expression,expression_name,identity_guess"]
    for k, (e, name) in enumerate(((3, "happy"), (6, "neutral"), (7, "contempt"))):
        write_png(data / "lfw_expressions" / "images" / f"p_{k}.jpg", rng.integers(0, 255, (90, 90, 1)))
        rows.append(f"images/p_{k}.jpg,{e},{name},p")
    (data / "lfw_expressions" / "labels.csv").write_text("\n".join(rows) + "\n")
    from kfacemtl.tasks import ACTION_UNITS
    rows = ["path,subject,sequence,frame,expression,expression_name," + ",".join(ACTION_UNITS)]
    for k in range(20):  # CK+ with action units: 20 subjects, a neutral first frame and a peak frame each
        for frame, expression in (("first", 6), ("peak", (0, 3, 5, 7)[k % 4])):
            name = f"images/S{k:03d}_001_{frame}.png"
            write_png(data / "ckplus_au" / name, rng.integers(0, 255, (32, 32, 1)))
            aus = ["1" if frame == "peak" and (j + k) % 3 == 0 else "0" for j in range(len(ACTION_UNITS))]
            rows.append(f"{name},S{k:03d},S{k:03d}_001,{frame},{expression},x," + ",".join(aus))
    (data / "ckplus_au" / "labels.csv").write_text("\n".join(rows) + "\n")


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
