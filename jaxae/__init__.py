"""jaxae: probabilistic and regularized autoencoders in JAX/Flax.

Modules, in the order data flows: `data` -> `nets`/`heads` -> `models` -> `objectives` -> `train`
-> `evaluate` (with `config`, `parallel`, `checkpoint`, `plots`); the PAE tools `flows` and
`laplace` read trained models. Import the ones you need, e.g. ``from jaxae import models``.
"""

__version__ = "0.1.0"
