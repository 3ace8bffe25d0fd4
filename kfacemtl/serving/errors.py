"""What can go wrong when a model is asked: the serving errors, and how a server's message becomes one that names
the image at fault.

Example:
    >>> issubclass(InvalidInputError, ServingError), issubclass(ServingError, KfacemtlError)
    (True, True)
"""
from __future__ import annotations

import re
from typing import Sequence

from kfacemtl.errors import KfacemtlError


class ServingError(KfacemtlError):
    """A prediction request failed.

    Example:
        >>> try:
        ...     LocalPredictor("saved_models/faces/1").predict(["no-such-face.jpg"])   # doctest: +SKIP
        ... except ServingError as e:                   # every serving failure: model, input or server
        ...     print(e)
        >>> issubclass(InvalidInputError, ServingError) and issubclass(ModelNotFoundError, ServingError)
        True
    """


class ModelNotFoundError(ServingError):
    """The server does not have the model, version or label asked for (NOT_FOUND).

    Example:
        >>> from kfacemtl.serving.client import LocalPredictor
        >>> try:
        ...     LocalPredictor("saved_models/no-such-model/9")
        ... except ModelNotFoundError as e:
        ...     print(e)
        saved_models/no-such-model/9 is not a SavedModel folder (no saved_model.pb); pass BASE/NAME/VERSION
    """


class InvalidInputError(ServingError):
    """The server refused the input (INVALID_ARGUMENT): corrupt, empty or oversized images.

    ``image`` names the offending image when it is known, ``detail`` is the server's reason.

    Example:
        >>> e = InvalidInputError("notes.png: is not a JPEG or PNG", image="notes.png")
        >>> e.image, e.detail
        ('notes.png', 'notes.png: is not a JPEG or PNG')
    """

    def __init__(self, message: str, image: str | None = None, detail: str = ""):
        super().__init__(message)
        self.image, self.detail = image, detail or message


class ServerUnavailableError(ServingError):
    """The server did not answer, even after the retries (UNAVAILABLE or a timeout).

    Example:
        >>> from kfacemtl.serving.client import Client
        >>> client = Client("127.0.0.1:9", "faces", retries=1, backoff=0.01, timeout=2)   # no server there
        >>> try:
        ...     client.predict([b"any bytes"])
        ... except ServerUnavailableError as e:
        ...     print(str(e).split(" (")[0])
        model 'faces' at 127.0.0.1:9: server unavailable after 1 retries
    """


def clean_message(message: str) -> str:
    """The useful part of a TensorFlow error: the failed assertion's text, without graph noise.

    Example:
        >>> clean_message("Graph execution error:\\n\\nDetected at node x defined at (most recent call "
        ...                "last):\\n<stack traces unavailable>\\nInvalid JPEG data, size 22\\n\\t [[{{node x}}]]")
        'Invalid JPEG data, size 22'
    """
    m = re.search(r"assertion failed: (.*)", message)
    if m:
        return re.sub(r"\] \[", " ", m.group(1)).strip("[] ")
    noise = ("Graph execution error", "Detected at node", "<stack traces", "[[", "[Op:")
    lines = [ln.strip() for ln in message.splitlines()]
    useful = [ln for ln in lines if ln and not ln.startswith(noise)]
    return (useful or [ln for ln in lines if ln] or ["no message"])[0]


def which_image(message: str, names: Sequence[str]) -> tuple[str | None, str]:
    """``(image name, reason)`` from a signature error ``image <i> <reason>`` (i: index in the batch).

    Example:
        >>> which_image("image 1 is empty (0 bytes)", ["a.jpg", "b.jpg"])
        ('b.jpg', 'is empty (0 bytes)')
    """
    m = re.match(r"image (\d+) (.*)", message)
    if m and int(m.group(1)) < len(names):
        return names[int(m.group(1))], m.group(2)
    return (names[0] if len(names) == 1 else None), message
