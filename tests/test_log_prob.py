"""`evaluate.log_prob`: log p(x) of a live model, jitted and batched, against a closed form."""

import jax.numpy as jnp
import numpy as np
import pytest

from jaxae import evaluate, models


def _images(n=37, shape=(8, 8, 1)):
    return np.random.default_rng(0).integers(0, 256, (n, *shape), dtype=np.uint8)


def test_normal_identity_matches_the_closed_form():
    model = models.build({**models.vpae_spec("normal_identity", 1, "mlp", (8, 8, 1)), "seed": 3})
    images = _images()  # 37: not a multiple of the batch, so the last batch is padded
    got = evaluate.log_prob(model, images, batch_size=8)
    x = images.reshape(len(images), -1).astype(np.float64) / 255
    mu = np.asarray(model.decode(model.encode(jnp.asarray(images / 255, jnp.float32))))
    mu = mu[:, 1:].astype(np.float64)  # the head's inert mixture logit comes first
    want = -0.5 * np.sum((x - mu) ** 2, 1) - 0.5 * x.shape[1] * np.log(2 * np.pi)
    assert got.shape == (37,)
    np.testing.assert_allclose(got, want, rtol=1e-5)
    np.testing.assert_allclose(evaluate.log_prob(model, images / 255.0), got, rtol=1e-6)


def test_bad_input_is_named():
    model = models.build(models.vpae_spec("normal_diag", 1, "mlp", (8, 8, 1)))
    with pytest.raises(ValueError, match="shape"):
        evaluate.log_prob(model, _images(shape=(4, 4, 1)))
    with pytest.raises(ValueError, match="NaN"):
        evaluate.log_prob(model, np.full((2, 8, 8, 1), np.nan, np.float32))
    with pytest.raises(ValueError, match="empty"):
        evaluate.log_prob(model, np.zeros((0, 8, 8, 1), np.uint8))
    mse = models.build(models.vpae_spec("mse", 1, "mlp", (8, 8, 1)))
    with pytest.raises(ValueError, match="not a density"):
        evaluate.log_prob(mse, _images())
