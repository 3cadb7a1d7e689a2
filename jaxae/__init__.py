"""jaxae: probabilistic and regularized autoencoders in JAX/Flax.

Modules, in the order data flows: `data` -> `nets` -> `objectives` -> `train` (with `parallel`,
`checkpoint`, `config`), and `plots`. Import the ones you need, e.g. ``from jaxae import train``.
"""

__version__ = "0.1.0"
