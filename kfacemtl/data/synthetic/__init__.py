"""The synthetic multi-domain face benchmark: a procedural face renderer with full ground truth.

No real dataset labels every task, and none can be downloaded at run time, so the package
renders faces whose latent factors are known: identity (face geometry per person), age,
gender, race, an expression produced from FACS action units with a random intensity,
the action units themselves, and valence/arousal derived from expression and intensity.
Nuisance factors (pose, scale, shift, lighting, background, occluders, noise) and the
domain's rendering style make the tasks non-trivial.

Expression lives where it lives on real faces: brows (AU1, AU2, AU4), eyes (AU5, AU6,
AU7), nose (AU9) and mouth/chin (AU12, AU15, AU17, AU20, AU23, AU25, AU26).
:func:`render_faces` can return a mask per facial region so that saliency maps can be
checked against the place the cue really is.

Everything is vectorised over a batch with numpy and deterministic given a seed.

Example:
    >>> import numpy as np
    >>> from kfacemtl.data.synthetic import sample_factors, render_faces, DOMAINS
    >>> f = sample_factors(8, DOMAINS["lab"], np.random.default_rng(0))
    >>> images, regions = render_faces(f, DOMAINS["lab"], np.random.default_rng(1), regions=True)
    >>> images.shape, images.dtype, sorted(regions)[:3]
    ((8, 64, 64, 3), dtype('uint8'), ['brows', 'cheeks', 'chin'])
"""

from kfacemtl.data.synthetic.factors import DOMAINS, LABELLED_DOMAINS, Domain, sample_factors
from kfacemtl.data.synthetic.render import render_faces
from kfacemtl.data.synthetic.source import SyntheticSource
from kfacemtl.data.synthetic.store import LABEL_KEYS, generate, load_split

__all__ = ["DOMAINS", "LABELLED_DOMAINS", "Domain", "sample_factors", "render_faces", "SyntheticSource", "LABEL_KEYS",
           "generate", "load_split"]
