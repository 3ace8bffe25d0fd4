"""Annotated copies of analysed photos: each face's box, its landmarks and its main answers drawn on the photo.

Example:
    >>> import numpy as np
    >>> record = {"photo": "p.png", "status": "ok", "faces": [{"box": [10, 10, 40, 50], "score": 0.99,
    ...           "landmarks": {"left_eye": [20, 25]}, "answers": {"age": 31.2}}]}
    >>> annotated(np.zeros((80, 80, 3), np.uint8), record).size
    (80, 80)
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from kfacemtl.analysis.photos import main_answers
from kfacemtl.data import decode_rgb
from kfacemtl.files import atomic_write

COLOURS = ((230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180), (70, 240, 240))


def label_lines(answers: dict) -> list[str]:
    """The lines written beside a face: one per task, a class with its probability, an age, the active AUs.

    Example:
        >>> label_lines({"age": 31.46, "gender": {"class": "female", "label": 1, "probs": [0.2, 0.8]}})
        ['age 31.5', 'gender female 0.80']
    """
    short, lines = main_answers(answers), []
    for task, value in short.items():
        if task.endswith("_p"):
            continue
        if f"{task}_p" in short:
            lines.append(f"{task} {value} {short[f'{task}_p']:.2f}")
        else:
            lines.append(f"{task} {value if value != '' else '-'}")
    return lines


def annotated(photo: np.ndarray, record: dict) -> Image.Image:
    """A copy of ``photo`` (``uint8`` (H, W, 3)) with ``record``'s faces drawn: box, landmarks and answers.

    Example:
        >>> face = {"box": [4, 4, 30, 30], "score": 0.9, "landmarks": {}, "answers": {"age": 40.0}}
        >>> image = annotated(np.zeros((60, 60, 3), np.uint8), {"faces": [face]})
        >>> image.size, bool(np.asarray(image).max() > 0)
        ((60, 60), True)
    """
    image = Image.fromarray(np.asarray(photo, np.uint8)).convert("RGB")
    draw = ImageDraw.Draw(image)
    size = max(10, round(min(image.size) / 40))
    try:
        font = ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: one size only
        font = ImageFont.load_default()
    width = max(1, round(min(image.size) / 200))
    for k, face in enumerate(record["faces"]):
        colour = COLOURS[k % len(COLOURS)]
        x, y, w, h = face["box"]
        draw.rectangle([x, y, x + w, y + h], outline=colour, width=width)
        for px, py in face["landmarks"].values():
            draw.ellipse([px - width, py - width, px + width, py + width], fill=colour)
        text = "\n".join([f"#{k} ({face['score']:.2f})"] + label_lines(face["answers"]))
        left, top, right, bottom = draw.multiline_textbbox((x, y + h + 2), text, font=font)
        if bottom > image.size[1]:  # no room below the box: above it
            top, bottom = y - (bottom - top) - 2, y - 2
        draw.rectangle([left - 1, top - 1, right + 1, bottom + 1], fill=(0, 0, 0))
        draw.multiline_text((left, top), text, fill=colour, font=font)
    return image


def write_annotated(records, out_dir) -> list[Path]:
    """Save an annotated copy of each readable photo of ``records`` in ``out_dir`` (as PNG, named after the photo,
    numbered when two photos share a name); returns the paths written.

    Example:
        >>> import tensorflow as tf
        >>> _ = open("kid.png", "wb").write(tf.io.encode_png(np.zeros((40, 40, 3), np.uint8)).numpy())
        >>> record = {"photo": "kid.png", "status": "no face", "faces": []}
        >>> [p.name for p in write_annotated([record, record], "annotated")]
        ['kid.png', 'kid-2.png']
    """
    out, written, used = Path(out_dir), [], set()
    for record in records:
        if record["status"].startswith(("unreadable", "too large")):
            continue
        photo = decode_rgb(Path(record["photo"]).read_bytes()).numpy()
        stem, n = Path(record["photo"]).stem, 1
        name = f"{stem}.png"
        while name in used:
            n += 1
            name = f"{stem}-{n}.png"
        used.add(name)
        image = annotated(photo, record)
        written.append(atomic_write(out / name, lambda tmp: image.save(tmp, format="PNG")))
    return written
