"""jaxae: probabilistic and regularized autoencoders in JAX/Flax.

Modules, in the order data flows: `data` -> `nets`/`heads` -> `models` -> `objectives` -> `train`
-> `evaluate` (with `config`, `parallel`, `checkpoint`, `plots`); the PAE's `flows`, `laplace`
(OoD scores), `pae` (its flow stage, sampling, scoring) and `inpaint` (posterior inpainting) read
trained models. Import the ones you need, e.g. ``from jaxae import models``.
"""

__version__ = "0.1.0"
