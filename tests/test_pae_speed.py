"""benchmarks/pae_speed.py: its plain-JAX references are the same networks as ours, and its
quick mode runs."""

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from benchmarks import pae_speed
from jaxae import flows, objectives

_AE_NAMES = {
    "c1": "conv1", "c2": "conv2", "d3": "dense3", "code": "to_code", "fc": "from_code",
    "d2": "dense_d2", "u1": "up1", "u2": "up2",
}  # fmt: skip
_BN_NAMES = ("bn2", "bn3", "bn_d1", "bn_d2", "bn_u1")


def test_plain_infogan_is_our_network():
    model = pae_speed._infogan_model()
    objectives.split(model, train=True)
    net = model.net
    params, stats = pae_speed.plain_infogan_init(jax.random.PRNGKey(0))
    for plain, ours in _AE_NAMES.items():
        layer = getattr(net, ours)
        params[plain] = {"w": layer.kernel[...], "b": layer.bias[...]}
    x = jax.random.uniform(jax.random.PRNGKey(1), (8, *pae_speed.IMAGE_SHAPE)) - 0.5
    # each side one jitted call: eager, every op of the 13M-weight net compiles on its own
    y_plain, new_stats = jax.jit(pae_speed.plain_infogan_apply)(params, stats, x)
    # train mode: updates the running statistics (nnx.jit carries the update back into `net`)
    y_ours = nnx.jit(lambda net, x: net.decode(net.encode(x)))(net, x)
    np.testing.assert_allclose(y_plain, y_ours, rtol=1e-4, atol=1e-4)
    for name in _BN_NAMES:
        bn = getattr(net, name)
        np.testing.assert_allclose(new_stats[name]["mean"], bn.mean[...], rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(new_stats[name]["var"], bn.var[...], rtol=1e-3, atol=1e-5)


def test_plain_realnvp_is_our_flow():
    flow = flows.make("realnvp", pae_speed.K, rngs=nnx.Rngs(params=0))
    layers, perms, masks, last = pae_speed.plain_realnvp_init(jax.random.PRNGKey(0))
    assert [tuple(int(i) for i in p) for p in perms] == list(flow.perms)
    key = jax.random.PRNGKey(2)
    for layer, cond in zip(layers, flow.conditioners, strict=True):
        key, *ks = jax.random.split(key, 3)
        # non-zero last layers, so that the couplings are not the identity
        cond.out.kernel[...] = 0.1 * jax.random.normal(ks[0], cond.out.kernel.shape)
        cond.out.bias[...] = 0.1 * jax.random.normal(ks[1], cond.out.bias.shape)
        layer["inp"] = {"w": cond.inp.kernel[...], "b": cond.inp.bias[...]}
        layer["out"] = {"w": cond.out.kernel[...], "b": cond.out.bias[...]}
        for blk, ours in zip(layer["blocks"], cond.blocks, strict=True):
            blk.update(w1=ours.l1.kernel[...], b1=ours.l1.bias[...])
            blk.update(w2=ours.l2.kernel[...], b2=ours.l2.bias[...])
    z = jax.random.normal(jax.random.PRNGKey(3), (16, pae_speed.K))
    plain = pae_speed.plain_realnvp_log_prob(layers, perms, masks, last, z)
    np.testing.assert_allclose(plain, flow.log_prob(z), rtol=1e-4, atol=1e-4)
    assert float(jnp.std(plain)) > 0


def test_quick_realnvp_case_runs():
    lines = pae_speed.main(["--quick", "--cases", "realnvp_epoch"])
    line = next(x for x in lines if x["case"] == "realnvp_epoch")
    assert line["s_per_epoch"] > 0 and line["s_per_epoch_plain"] > 0
    assert line["speedup"] > 0 and line["nflows_reference_s"] == pae_speed.NFLOWS_S
