# ruff: noqa: E501  (the docstring quotes the JSON output lines verbatim)
"""Speed of the PAE's pieces (Boehm & Seljak 2020) against plain JAX written in the same run.

Command:   python -m benchmarks.pae_speed
Smoke run: python -m benchmarks.pae_speed --quick

Prints one JSON line per case, every reference measured in this same process (the machines are
shared and timings vary up to 1.6x between runs: compare ratios within one run, never across):

- ``ae_epoch``: the infoGAN autoencoder (`nets.InfoGANAutoencoder`, K=32, BatchNorm model
  state, `mse` head) trained with Adam 1e-3, batch 128, by the trainer's scanned chunk
  (`train.make_train_chunk`, on-device uint8 data, `Preprocess('centered')`), against the same
  network written plainly in JAX (`lax.conv_general_dilated` convolutions, `lax.conv_transpose`
  transposed convolutions, a hand-written BatchNorm with running statistics, optax adam, a
  jitted `lax.scan` of the step over the same gathered batches). Each timed call runs a few
  steps; ``s_per_epoch`` is extrapolated to 60,000/128 = 468 steps (``"extrapolated": true``).
  ``speedup`` = plain / ours. ``torch_reference_s`` is STYLE.md's plain-PyTorch figure for this
  network on these machines: a constant, NOT measured here.
- ``realnvp_epoch``: `flows.RealNVP` (8 affine couplings, residual conditioners of 2 blocks of
  128 units, K=32) trained by maximum likelihood (``-log_prob``, `train.single` +
  `make_train_chunk`) on 60,000 random 32-d vectors, batch 256, Adam 1e-3: one whole epoch per
  timed call, against the same flow written plainly (no distrax: masks, permutations and
  residual MLPs by hand, a jitted `lax.scan`). ``nflows_reference_s`` (3.2 s) is STYLE.md's
  constant, not measured here.
- ``laplace_costs``: per-image cost of the PAE scores on a batch of 128 random 28x28x1 images,
  with the infoGAN decoder (eval mode) and a RealNVP at K=32 as the single-example ``decode`` /
  ``flow`` callables of `jaxae.laplace`, each function jitted and vmapped over the batch:
  (a) ``reconstruction_term`` and (b) ``latent_log_density`` at z0 = f(x), (c) ``eq12`` at a
  MAP found by `map_estimate` with a fixed budget (``--map-steps`` L-BFGS steps, no early stop;
  the MAP is included in (c)'s time) and (d) ``log_evidence`` (Eq. 11) at that MAP (MAP not
  included). Each is given in seconds per image, images/s and as a multiple of ONE batched
  decoder forward pass on the same batch (``decoder_passes``). The issue's target for Eq. 11:
  at most 1.5 (K+1) decoder passes (``target_met``).

- ``inpaint_costs`` (`jaxae.inpaint`): at K=8 and K=32, an infoGAN PAE (untrained weights: the
  cost does not depend on them) MAP-inpaints ``--inpaint-images`` random images with the block
  corruption from 10 starts each, ``--map-steps`` L-BFGS steps with no early stop, in one
  ``inpaint.posterior`` call (MAPs, Hessians, mode merging); the time is extrapolated linearly
  to 1,000 images x 100 steps (``_extrapolated``); ``map_decoder_passes_per_start_step`` is one
  L-BFGS step of one start as a multiple of one decoder pass per image (the parallel line search
  evaluates 13 trial points per step). ``s_per_posterior_sample``: drawing 100
  mixture samples per image and decoding them, per sample, also as a multiple of one batched
  decoder pass over as many codes (``posterior_sample_decoder_passes``).

Every time is the median of ``--repeats`` calls after a first (compiling) call, whose time is
``compile_s``.

Output of a real run on 2 CPU cores (2026-12-02), ``python -m benchmarks.pae_speed``
(517 s), for the first two cases::

    {"case": "setup", "backend": "cpu", "devices": 1, "cpus": 2, "jax": "0.10.2", "quick": false, "repeats": 5}
    {"case": "ae_epoch", "model": "infogan", "K": 32, "batch_size": 128, "devices": 1, "steps_per_epoch": 468, "data": "60000 random uint8 28x28x1 images", "timed_steps_per_call": 20, "extrapolated": true, "compile_s": 5.685, "s_per_epoch": 73.1, "s_per_epoch_all": [75.24, 73.74, 71.03, 70.87, 73.1], "plain_timed_steps_per_call": 4, "plain_compile_s": 18.92, "s_per_epoch_plain": 2053.0, "s_per_epoch_plain_all": [2053.0, 2061.0, 2044.0, 2052.0, 2080.0], "speedup": 28.08, "torch_reference_s": 56.0, "torch_reference_note": "STYLE.md constant (plain PyTorch), not measured in this run", "ratio_torch_reference_to_ours": 0.7661}
    {"case": "realnvp_epoch", "K": 32, "n_layers": 8, "hidden": 128, "n_blocks": 2, "batch_size": 256, "num_examples": 60000, "steps_per_call": 234, "devices": 1, "compile_s": 3.82, "s_per_epoch": 2.134, "extrapolated": false, "s_per_epoch_all": [2.134, 2.125, 2.084, 2.209, 2.255], "examples_per_s": 28070.0, "plain_compile_s": 3.516, "s_per_epoch_plain": 2.031, "s_per_epoch_plain_all": [2.069, 1.998, 2.043, 1.931, 2.031], "examples_per_s_plain": 29490.0, "speedup": 0.9518, "nflows_reference_s": 3.2, "nflows_reference_note": "STYLE.md constant (nflows), not measured in this run", "ratio_nflows_reference_to_ours": 1.499}

and of ``python -m benchmarks.pae_speed --cases laplace_costs,inpaint_costs`` (2026-12-03,
149 s; the MAPs use `laplace.default_optimizer`, whose line search evaluates its trial steps
in one vmap: with optax's zoom line search, vmapped, ``eq12_map`` cost 1,293 decoder passes
on 2026-12-02)::

    {"case": "setup", "backend": "cpu", "devices": 1, "cpus": 2, "jax": "0.10.2", "quick": false, "repeats": 5}
    {"case": "laplace_costs", "K": 32, "batch": 128, "image_shape": [28, 28, 1], "map_steps": 20, "map_optimizer": "laplace.default_optimizer() (L-BFGS, parallel line search), no early stop", "decoder_pass_s": 0.0341, "decoder_pass_s_per_image": 0.0002664, "decoder_vmapped_single_example_passes": 0.9503, "reconstruction_s_per_image": 0.0002552, "reconstruction_images_per_s": 3918.0, "reconstruction_decoder_passes": 0.9582, "reconstruction_compile_s": 0.3283, "latent_density_s_per_image": 1.195e-05, "latent_density_images_per_s": 83700.0, "latent_density_decoder_passes": 0.04485, "latent_density_compile_s": 0.3305, "eq12_map_s_per_image": 0.06151, "eq12_map_images_per_s": 16.26, "eq12_map_decoder_passes": 230.9, "eq12_map_compile_s": 11.16, "log_evidence_s_per_image": 0.009403, "log_evidence_images_per_s": 106.3, "log_evidence_decoder_passes": 35.3, "log_evidence_compile_s": 3.315, "log_evidence_target_passes": 49.5, "target_met": true}
    {"case": "inpaint_costs", "corruption": "block_noise", "starts": 10, "timed_images": 8, "timed_steps": 20, "extrapolated_to": "1000 images x 10 starts x 100 steps (linear: a fixed budget, no early stop)", "k8_compile_s": 13.01, "k8_timed_call_s": 5.439, "k8_wall_s_extrapolated": 3400.0, "k8_images_per_s_extrapolated": 0.2942, "k8_map_decoder_passes_per_start_step": 12.71, "k8_s_per_posterior_sample": 0.0002765, "k8_posterior_sample_decoder_passes": 1.034, "k32_compile_s": 15.64, "k32_timed_call_s": 7.692, "k32_wall_s_extrapolated": 4807.0, "k32_images_per_s_extrapolated": 0.208, "k32_map_decoder_passes_per_start_step": 18.25, "k32_s_per_posterior_sample": 0.0002621, "k32_posterior_sample_decoder_passes": 0.9946}
    {"case": "total", "wall_s": 149.2}
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from jaxae import data as jdata
from jaxae import flows, laplace, models, objectives, parallel, train

K = 32
AE_BATCH = 128
FLOW_BATCH = 256
NUM_EXAMPLES = 60_000
LEARNING_RATE = 1e-3
SEED = 0
IMAGE_SHAPE = (28, 28, 1)
TORCH_AE_S = 56.0  # STYLE.md: the infoGAN AE in plain PyTorch, s/epoch on these machines
NFLOWS_S = 3.2  # STYLE.md: nflows' RealNVP (same shape), s/epoch on these machines
CASES = ("ae_epoch", "realnvp_epoch", "laplace_costs", "inpaint_costs")
INPAINT_IMAGES, INPAINT_STARTS, INPAINT_STEPS = 1_000, 10, 100  # the workload


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--quick", action="store_true", help="tiny sizes and steps (smoke test)")
    p.add_argument("--cases", default=",".join(CASES), help=f"subset of {','.join(CASES)}")
    p.add_argument("--repeats", type=int, default=None, help="timed calls per measurement (>= 3)")
    p.add_argument("--ae-steps", type=int, default=None, help="steps per timed call, ours")
    p.add_argument("--plain-ae-steps", type=int, default=None, help="steps per timed call, plain")
    p.add_argument("--map-steps", type=int, default=None, help="L-BFGS steps of the MAP")
    p.add_argument("--inpaint-images", type=int, default=None, help="images per timed call")
    args = p.parse_args(argv)
    args.cases = [c for c in args.cases.split(",") if c]
    if set(args.cases) - set(CASES):
        p.error(f"unknown cases {sorted(set(args.cases) - set(CASES))}; choose from {CASES}")
    if args.repeats is None:
        args.repeats = 3 if args.quick else 5
    if args.repeats < 3:
        p.error("--repeats must be >= 3 (times are medians)")
    q = args.quick
    args.ae_steps = args.ae_steps or (2 if q else 20)
    args.plain_ae_steps = args.plain_ae_steps or (1 if q else 4)
    args.map_steps = args.map_steps or (3 if q else 20)
    args.inpaint_images = args.inpaint_images or (2 if q else 8)
    args.num_examples = 2_560 if q else NUM_EXAMPLES
    args.laplace_batch = 16 if q else 128
    args.ae_batch = 16 if q else AE_BATCH  # quick: a smaller batch, extrapolated to its epoch
    return args


def emit(line: dict) -> None:
    print(json.dumps(line), flush=True)


def _rounded(x, digits=4):
    if isinstance(x, list):
        return [_rounded(v, digits) for v in x]
    return float(f"{x:.{digits}g}") if isinstance(x, float) and math.isfinite(x) else x


def _time(fn, repeats: int) -> tuple[float, float, list[float]]:
    """(compile_s, median_s, all_s): the first call of ``fn()`` and `repeats` more, waited for."""
    t0 = time.perf_counter()
    jax.block_until_ready(fn())
    first = time.perf_counter() - t0
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t0)
    return first, statistics.median(times), times


# --- Plain JAX infoGAN autoencoder --------------------------------------------------------------

_DN = ("NHWC", "HWIO", "NHWC")


def plain_infogan_init(key, shape=IMAGE_SHAPE, k=K):
    """Parameters and BatchNorm statistics of the infoGAN AE, initialised like flax's."""
    h, w, c = shape
    n = (h // 4) * (w // 4) * 128
    lecun = jax.nn.initializers.lecun_normal()
    weights = {
        "c1": (4, 4, c, 64), "c2": (4, 4, 64, 128), "d3": (n, 1024), "code": (1024, k),
        "fc": (k, 1024), "d2": (1024, n), "u1": (4, 4, 128, 64), "u2": (4, 4, 64, c),
    }  # fmt: skip
    keys = jax.random.split(key, len(weights))
    params = {}
    for kk, (name, s) in zip(keys, weights.items(), strict=True):
        params[name] = {"w": lecun(kk, s), "b": jnp.zeros((s[-1],))}
    bns = {"bn2": 128, "bn3": 1024, "bn_d1": 1024, "bn_d2": n, "bn_u1": 64}
    stats = {}
    for name, d in bns.items():
        params[name] = {"scale": jnp.ones((d,)), "bias": jnp.zeros((d,))}
        stats[name] = {"mean": jnp.zeros((d,)), "var": jnp.ones((d,))}
    return params, stats


def _bn(p, s, x, new_stats, name, momentum=0.99, eps=1e-5):
    """Training-mode BatchNorm over every axis but the last; records the new running stats."""
    axes = tuple(range(x.ndim - 1))
    mean = jnp.mean(x, axes)
    var = jnp.mean(jnp.square(x - mean), axes)
    new_stats[name] = {
        "mean": momentum * s[name]["mean"] + (1 - momentum) * mean,
        "var": momentum * s[name]["var"] + (1 - momentum) * var,
    }
    return (x - mean) * jax.lax.rsqrt(var + eps) * p[name]["scale"] + p[name]["bias"]


def plain_infogan_apply(p, s, x):
    """Reconstructions [B, H*W*C] and new BatchNorm statistics, in training mode."""
    new = {}
    lrelu = lambda v: jax.nn.leaky_relu(v, 0.2)
    conv = lambda v, q: jax.lax.conv_general_dilated(
        v, q["w"], (2, 2), "SAME", dimension_numbers=_DN) + q["b"]  # fmt: skip
    convt = lambda v, q: jax.lax.conv_transpose(
        v, q["w"], (2, 2), "SAME", dimension_numbers=_DN) + q["b"]  # fmt: skip
    b, hh, ww, _ = x.shape
    h = lrelu(conv(x, p["c1"]))
    h = lrelu(_bn(p, s, conv(h, p["c2"]), new, "bn2"))
    h = h.reshape(b, -1)
    h = lrelu(_bn(p, s, h @ p["d3"]["w"] + p["d3"]["b"], new, "bn3"))
    z = h @ p["code"]["w"] + p["code"]["b"]
    h = jax.nn.relu(_bn(p, s, z @ p["fc"]["w"] + p["fc"]["b"], new, "bn_d1"))
    h = jax.nn.relu(_bn(p, s, h @ p["d2"]["w"] + p["d2"]["b"], new, "bn_d2"))
    h = h.reshape(b, hh // 4, ww // 4, 128)
    h = jax.nn.relu(_bn(p, s, convt(h, p["u1"]), new, "bn_u1"))
    return convt(h, p["u2"]).reshape(b, -1), new


def plain_ae_chunk(optimizer, batch_size: int):
    """jit(scan) of plain train steps over on-device uint8 images, like `make_train_chunk`."""

    def loss(p, s, x):
        y, new = plain_infogan_apply(p, s, x)
        return jnp.mean(jnp.square(y - x.reshape(x.shape[0], -1))), new

    def step(carry, t, images, perm, start):
        p, s, o = carry
        idx = jax.lax.dynamic_slice_in_dim(perm, (start + t) * batch_size, batch_size)
        x = images.reshape(images.shape[0], -1)[idx].reshape(batch_size, *images.shape[1:])
        x = x.astype(jnp.float32) / 255 - 0.5
        (value, s), g = jax.value_and_grad(loss, has_aux=True)(p, s, x)
        updates, o = optimizer.update(g, o, p)
        return (optax.apply_updates(p, updates), s, o), value

    def chunk(carry, images, perm, start, num_steps):
        body = lambda c, t: step(c, t, images, perm, start)
        return jax.lax.scan(body, carry, jnp.arange(num_steps))

    return jax.jit(chunk, static_argnums=4, donate_argnums=0)


def _infogan_model():
    spec = {"kind": "ae", "arch": "infogan", "head": "mse", "latent_dim": K,
            "image_shape": list(IMAGE_SHAPE), "seed": SEED}  # fmt: skip
    return models.build(spec)


def ae_case(args) -> dict:
    n = args.num_examples
    images = np.random.default_rng(SEED).integers(0, 256, (n, *IMAGE_SHAPE), dtype=np.uint8)
    batch = args.ae_batch
    steps_per_epoch = NUM_EXAMPLES // batch
    perm = jax.random.permutation(jax.random.PRNGKey(1), n)
    mesh = parallel.data_mesh()
    out = {"case": "ae_epoch", "model": "infogan", "K": K, "batch_size": batch,
           "devices": mesh.devices.size, "steps_per_epoch": steps_per_epoch,
           "data": f"{n} random uint8 28x28x1 images"}  # fmt: skip

    # Ours: the trainer's scanned chunk.
    model = _infogan_model()
    graphdef, params, model_state = objectives.split(model, train=True)
    update = train.single(objectives.loss_fn(graphdef), optax.adam(LEARNING_RATE))
    pre = jdata.Preprocess(scale="centered")
    prepare = lambda batch, key: {**batch, "image": pre(batch["image"], key)}
    data = parallel.replicate({"image": images}, mesh)
    state = parallel.replicate(train.init_state(params, update, SEED, model_state), mesh)
    chunk = train.make_train_chunk(update, batch, mesh, prepare)
    steps = args.ae_steps
    box = {"state": state}

    def ours():
        box["state"], metrics = chunk(box["state"], data, perm, 0, steps)
        return metrics["loss"]

    c, med, allt = _time(ours, args.repeats)
    scale = steps_per_epoch / steps
    out.update({"timed_steps_per_call": steps, "extrapolated": steps != steps_per_epoch,
                "compile_s": c, "s_per_epoch": med * scale,
                "s_per_epoch_all": [t * scale for t in allt]})  # fmt: skip
    box["state"] = state = None  # free the state before the plain run

    # Plain JAX: the same network with lax convolutions and transposed convolutions.
    opt = optax.adam(LEARNING_RATE)
    p, s = plain_infogan_init(jax.random.PRNGKey(SEED))
    pchunk = plain_ae_chunk(opt, batch)
    pbox = {"carry": (p, s, opt.init(p))}
    dimages = jnp.asarray(images)
    psteps = args.plain_ae_steps

    def plain():
        pbox["carry"], losses = pchunk(pbox["carry"], dimages, perm, 0, psteps)
        return losses

    c, pmed, pall = _time(plain, args.repeats)
    pscale = steps_per_epoch / psteps
    out.update({"plain_timed_steps_per_call": psteps, "plain_compile_s": c,
                "s_per_epoch_plain": pmed * pscale,
                "s_per_epoch_plain_all": [t * pscale for t in pall]})  # fmt: skip
    out["speedup"] = out["s_per_epoch_plain"] / out["s_per_epoch"]
    out["torch_reference_s"] = TORCH_AE_S
    out["torch_reference_note"] = "STYLE.md constant (plain PyTorch), not measured in this run"
    out["ratio_torch_reference_to_ours"] = TORCH_AE_S / out["s_per_epoch"]
    return out


# --- Plain JAX RealNVP --------------------------------------------------------------------------


def plain_realnvp_init(key, k=K, n_layers=8, hidden=128, n_blocks=2, seed=SEED):
    """Parameters (flax-like init, zero last layers), permutations and masks of the flow."""
    lecun = jax.nn.initializers.lecun_normal()
    layers = []
    for lk in jax.random.split(key, n_layers):
        ks = jax.random.split(lk, 1 + 2 * n_blocks)
        layer = {"inp": {"w": lecun(ks[0], (k, hidden)), "b": jnp.zeros((hidden,))}, "blocks": []}
        for i in range(n_blocks):
            layer["blocks"].append(
                {"w1": lecun(ks[1 + 2 * i], (hidden, hidden)), "b1": jnp.zeros((hidden,)),
                 "w2": lecun(ks[2 + 2 * i], (hidden, hidden)), "b2": jnp.zeros((hidden,))}
            )  # fmt: skip
        layer["out"] = {"w": jnp.zeros((hidden, 2 * k)), "b": jnp.zeros((2 * k,))}
        layers.append(layer)
    rng = np.random.default_rng(seed)
    perms = [rng.permutation(k) for _ in range(n_layers)]
    total = np.arange(k)
    for perm in perms:
        total = total[perm]
    masks = [(np.arange(k) + i) % 2 == 0 for i in range(n_layers)]
    return layers, perms, masks, np.argsort(total)


def plain_realnvp_log_prob(layers, perms, masks, last, z, bound=3.0):
    """log p(z) [B] of the plain RealNVP: permutation, affine coupling, ..., final permutation."""
    k = z.shape[-1]
    log_det = jnp.zeros(z.shape[:-1])
    x = z
    for layer, perm, mask in zip(layers, perms, masks, strict=True):
        x = x[..., perm]
        h = jnp.where(mask, x, 0.0) @ layer["inp"]["w"] + layer["inp"]["b"]
        for blk in layer["blocks"]:
            r = jax.nn.relu(jax.nn.relu(h) @ blk["w1"] + blk["b1"]) @ blk["w2"] + blk["b2"]
            h = h + r
        out = jax.nn.relu(h) @ layer["out"]["w"] + layer["out"]["b"]
        out = out.reshape(*out.shape[:-1], k, 2)
        shift, log_scale = out[..., 0], bound * jnp.tanh(out[..., 1] / bound)
        x = jnp.where(mask, x, x * jnp.exp(log_scale) + shift)
        log_det = log_det + jnp.sum(jnp.where(mask, 0.0, log_scale), axis=-1)
    u = x[..., last]
    return -0.5 * jnp.sum(u**2, axis=-1) - 0.5 * k * math.log(2 * math.pi) + log_det


def realnvp_case(args) -> dict:
    n = args.num_examples
    zs = np.random.default_rng(SEED).standard_normal((n, K)).astype(np.float32)
    steps = n // FLOW_BATCH
    mesh = parallel.data_mesh()
    perm = jax.random.permutation(jax.random.PRNGKey(1), n)
    out = {"case": "realnvp_epoch", "K": K, "n_layers": 8, "hidden": 128, "n_blocks": 2,
           "batch_size": FLOW_BATCH, "num_examples": n, "steps_per_call": steps,
           "devices": mesh.devices.size}  # fmt: skip

    # Ours: flows.RealNVP.log_prob through train.single + make_train_chunk.
    flow = flows.make("realnvp", K, rngs=nnx.Rngs(params=SEED))
    graphdef, params = nnx.split(flow, nnx.Param)
    loss = train.stateless(lambda p, b, key: {"loss": -nnx.merge(graphdef, p).log_prob(b["z"])})
    update = train.single(loss, optax.adam(LEARNING_RATE))
    data = parallel.replicate({"z": zs}, mesh)
    state = parallel.replicate(train.init_state(params, update, SEED), mesh)
    chunk = train.make_train_chunk(update, FLOW_BATCH, mesh)
    box = {"state": state}

    def ours():
        box["state"], metrics = chunk(box["state"], data, perm, 0, steps)
        return metrics["loss"]

    c, med, allt = _time(ours, args.repeats)
    scale = (NUM_EXAMPLES // FLOW_BATCH) / steps
    out.update({"compile_s": c, "s_per_epoch": med * scale, "extrapolated": scale != 1,
                "s_per_epoch_all": [t * scale for t in allt],
                "examples_per_s": steps * FLOW_BATCH / med})  # fmt: skip

    # Plain JAX: the same flow by hand, a jitted scan of Adam steps.
    layers, perms, masks, last = plain_realnvp_init(jax.random.PRNGKey(SEED))
    opt = optax.adam(LEARNING_RATE)

    def nll(p, z):
        return -jnp.mean(plain_realnvp_log_prob(p, perms, masks, last, z))

    @jax.jit
    def epoch(carry, zd, perm):
        def body(c, t):
            p, o = c
            idx = jax.lax.dynamic_slice_in_dim(perm, t * FLOW_BATCH, FLOW_BATCH)
            value, g = jax.value_and_grad(nll)(p, zd[idx])
            updates, o = opt.update(g, o, p)
            return (optax.apply_updates(p, updates), o), value

        return jax.lax.scan(body, carry, jnp.arange(steps))

    zd = jnp.asarray(zs)
    pbox = {"carry": (layers, opt.init(layers))}

    def plain():
        pbox["carry"], losses = epoch(pbox["carry"], zd, perm)
        return losses

    c, pmed, pall = _time(plain, args.repeats)
    out.update({"plain_compile_s": c, "s_per_epoch_plain": pmed * scale,
                "s_per_epoch_plain_all": [t * scale for t in pall],
                "examples_per_s_plain": steps * FLOW_BATCH / pmed})  # fmt: skip
    out["speedup"] = out["s_per_epoch_plain"] / out["s_per_epoch"]
    out["nflows_reference_s"] = NFLOWS_S
    out["nflows_reference_note"] = "STYLE.md constant (nflows), not measured in this run"
    out["ratio_nflows_reference_to_ours"] = NFLOWS_S / out["s_per_epoch"]
    return out


# --- Laplace costs ------------------------------------------------------------------------------


def laplace_case(args) -> dict:
    b = args.laplace_batch
    n_pix = math.prod(IMAGE_SHAPE)
    rng = np.random.default_rng(SEED)
    x = jnp.asarray(rng.uniform(-0.5, 0.5, (b, n_pix)).astype(np.float32))
    sigma = jnp.full((n_pix,), 0.1, jnp.float32)
    model = _infogan_model()
    graphdef, params, mstate = objectives.split(model, train=False)
    flow = flows.make("realnvp", K, rngs=nnx.Rngs(params=SEED))
    fgraph, fparams = nnx.split(flow, nnx.Param)
    # A flow that is not the identity: small random last layers.
    fparams = jax.tree.map(lambda a: a + 0.01 * jax.random.normal(jax.random.PRNGKey(3), a.shape),
                           fparams)  # fmt: skip

    def decode_batch(p, ms, z):
        return nnx.merge(graphdef, p, ms).decode(z)

    def fns(p, ms, fp):
        decode = lambda z: decode_batch(p, ms, z[None])[0]
        flow_fn = lambda z: nnx.merge(fgraph, fp).forward(z)
        return decode, flow_fn

    z0 = jax.jit(lambda p, ms, xi: nnx.merge(graphdef, p, ms).encode(xi))(
        params, mstate, x.reshape(b, *IMAGE_SHAPE)
    )

    def batched(term):
        """jit(vmap) of a single-example function term(decode, flow, x, z)."""

        @jax.jit
        def f(p, ms, fp, x, z):
            decode, flow_fn = fns(p, ms, fp)
            return jax.vmap(lambda xi, zi: term(decode, flow_fn, xi, zi))(x, z)

        return lambda z: f(params, mstate, fparams, x, z)

    def map_then_eq12(decode, flow_fn, xi, zi):
        z, _ = laplace.map_estimate(
            decode, flow_fn, sigma, xi, zi, steps=args.map_steps, gtol=0.0, ftol=-1.0
        )
        return laplace.eq12(decode, flow_fn, sigma, xi, z), z

    terms = {
        "reconstruction": batched(
            lambda d, f, xi, zi: laplace.reconstruction_term(d, sigma, xi, zi)
        ),
        "latent_density": batched(lambda d, f, xi, zi: laplace.latent_log_density(f, zi)),
        "eq12_map": batched(map_then_eq12),
        "log_evidence": batched(lambda d, f, xi, zi: laplace.log_evidence(d, f, sigma, xi, zi)),
    }
    dec = jax.jit(decode_batch)
    c_dec, t_dec, _ = _time(lambda: dec(params, mstate, z0), args.repeats)
    dec_vmapped = batched(lambda d, f, xi, zi: d(zi))
    _, t_dec_v, _ = _time(lambda: dec_vmapped(z0), args.repeats)
    out = {"case": "laplace_costs", "K": K, "batch": b, "image_shape": list(IMAGE_SHAPE),
           "map_steps": args.map_steps, "map_optimizer": "laplace.default_optimizer() (L-BFGS, parallel line search), no early stop",
           "decoder_pass_s": t_dec, "decoder_pass_s_per_image": t_dec / b,
           "decoder_vmapped_single_example_passes": t_dec_v / t_dec}  # fmt: skip
    z_map = None
    for name, fn in terms.items():
        arg = z_map if name == "log_evidence" else z0
        last = {}

        def call(fn=fn, arg=arg, last=last):
            last["out"] = fn(arg)
            return last["out"]

        # the MAP is the slow one: 3 timed calls (the minimum) keep the full run under 10 min
        c, t, _ = _time(call, 3 if name == "eq12_map" else args.repeats)
        if name == "eq12_map":
            z_map = last["out"][1]
        out[f"{name}_s_per_image"] = t / b
        out[f"{name}_images_per_s"] = b / t
        out[f"{name}_decoder_passes"] = t / t_dec
        out[f"{name}_compile_s"] = c
    out["log_evidence_target_passes"] = 1.5 * (K + 1)
    out["target_met"] = out["log_evidence_decoder_passes"] <= out["log_evidence_target_passes"]
    return out


def inpaint_case(args) -> dict:
    """MAP-inpainting cost (`inpaint.posterior`) at K=8 and K=32, extrapolated to the issue's
    1,000 images x 10 starts x 100 L-BFGS steps, and the cost of one posterior sample."""
    from jaxae import inpaint, pae

    out = {"case": "inpaint_costs", "corruption": "block_noise", "starts": INPAINT_STARTS,
           "timed_images": args.inpaint_images, "timed_steps": args.map_steps,
           "extrapolated_to": f"{INPAINT_IMAGES} images x {INPAINT_STARTS} starts x "
                              f"{INPAINT_STEPS} steps (linear: a fixed budget, no early stop)"}  # fmt: skip
    rng = np.random.default_rng(SEED)
    n, b = math.prod(IMAGE_SHAPE), args.inpaint_images
    c = inpaint.corruption("block_noise", IMAGE_SHAPE)
    x = rng.uniform(-0.5, 0.5, (b, n)).astype(np.float32)
    for k in (8, K):
        ae = models.build({"kind": "ae", "arch": "infogan", "head": "mse", "latent_dim": k,
                           "image_shape": list(IMAGE_SHAPE)})  # fmt: skip
        model = pae.build(ae, np.full(n, 0.1, np.float32), rng.normal(size=(64, k)))
        generate, sigma = pae.generator(model)
        u0 = rng.normal(size=(b, INPAINT_STARTS, k)).astype(np.float32)

        def run(generate=generate, sigma=sigma, u0=u0):
            return inpaint.posterior(generate, sigma, x, c.mask.reshape(-1), c.noise.reshape(-1),
                                     u0, steps=args.map_steps, gtol=0.0, ftol=-1.0)["u"]  # fmt: skip

        comp, t, _ = _time(run, 3)
        scale = (INPAINT_IMAGES / b) * (INPAINT_STEPS / args.map_steps)
        post = jax.tree.map(np.asarray, inpaint.posterior(
            generate, sigma, x, c.mask.reshape(-1), c.noise.reshape(-1), u0, steps=2))  # fmt: skip
        per = 100
        draw = jax.jit(jax.vmap(generate))

        def samples(post=post, draw=draw, per=per, k=k):
            u = inpaint.sample(post, jax.random.PRNGKey(0), per)
            return draw(u.reshape(-1, k))

        zb = jnp.zeros((b * per, k))
        _, t_dec, _ = _time(lambda draw=draw, zb=zb: draw(zb), args.repeats)
        _, t_s, _ = _time(samples, args.repeats)
        out[f"k{k}_compile_s"] = comp
        out[f"k{k}_timed_call_s"] = t
        out[f"k{k}_wall_s_extrapolated"] = t * scale
        out[f"k{k}_images_per_s_extrapolated"] = INPAINT_IMAGES / (t * scale)
        # one MAP step of one start, in batched decoder passes per image (t_dec: b * per codes)
        out[f"k{k}_map_decoder_passes_per_start_step"] = (
            t / (b * INPAINT_STARTS * args.map_steps) / (t_dec / (b * per))
        )
        out[f"k{k}_s_per_posterior_sample"] = t_s / (b * per)
        out[f"k{k}_posterior_sample_decoder_passes"] = t_s / t_dec
    return out


def main(argv=None) -> list[dict]:
    args = parse_args(argv)
    t_start = time.perf_counter()
    out = []
    header = {"case": "setup", "backend": jax.default_backend(), "devices": jax.device_count(),
              "cpus": len(os.sched_getaffinity(0)), "jax": jax.__version__,
              "quick": args.quick, "repeats": args.repeats}  # fmt: skip
    for line in [header]:
        out.append(line)
        emit(line)
    runners = {"ae_epoch": ae_case, "realnvp_epoch": realnvp_case, "laplace_costs": laplace_case,
               "inpaint_costs": inpaint_case}  # fmt: skip
    for case in args.cases:
        line = {k: _rounded(v) for k, v in runners[case](args).items()}
        out.append(line)
        emit(line)
    emit({"case": "total", "wall_s": _rounded(time.perf_counter() - t_start)})
    return out


if __name__ == "__main__":
    main()
