"""Speed of the regularized-autoencoder family (`jaxae.regularized`) on pythae's benchmark network.

Command:   python -m benchmarks.regularized_speed
Smoke run: python -m benchmarks.regularized_speed --quick --models ae,wae --data random
Options:   --models ae,vae,...  --steps N (steps per timed call)  --repeats N  --data random

What it measures, all in this one process (the machines are shared and timings vary up to 1.6x
between runs: compare ratios within one run, never across runs):

- ``matmul_gflop_s_*``: this machine's float32 matmul rate, a jitted 2048 x 2048 ``a @ b``
  (best of 9 calls; `benchmarks.train_speed.matmul_reference`), before and after the timed
  training calls (their drift shows whether the load changed); the better of the two is the
  peak (``matmul_gflop_s_peak``) every ``fraction_of_peak`` is of.
- One train step of each model on arch 'pythae' (`nets.PythaeAutoencoder`: 1-64-128 4x4
  stride-2 convolutions, a linear code of 16, batch 128, 28x28x1 Fashion-MNIST images scaled to
  [0, 1], the `mse` head), the network of pythae's timings in STYLE.md. Each model is built
  with `models.build` (its settings under "settings"), split by `objectives.split` and trained
  by the update it declares (`train.model_update`: `single`, or `grouped` for a critic), with
  the config's default optimizer (Adam 1e-3; a critic's own overrides). The step runs as a real
  epoch does, in the trainer's scanned chunk (`train.make_train_chunk`) over on-device uint8
  data: after a first call of every model (trace, compile and one run: ``compile_s``),
  ``--repeats`` rounds (default 5) each time one call of ``--steps`` steps (default 10) of
  every model in turn, so that a change of the shared machine's load falls on all models alike;
  ``s_per_epoch`` is a model's median extrapolated to 60,000 / 128 = 468 steps.
  ``ratio_to_ae``, the cost of each regularizer or adversary, is the median over rounds of the
  model's call over the plain AE's call of the same round.
- FLOPs: XLA's cost analysis of the compiled chunk (a ``while`` body counts once, so the
  chunk's count is one step's; on N devices it counts one device's program, so it is
  multiplied by N, replicated work included). A critic trained ``steps`` > 1 times per
  iteration runs in an inner ``lax.scan``, also counted once: ``steps - 1`` critic steps are
  added, each counted as the critic's group alone (one step) less the encoder's forward pass,
  which depends neither on the critic's parameters nor on the step, so XLA hoists it out of
  the loop (measured on 2026-12-06: one more MaskAAE critic step per iteration added 4-8 ms,
  while the critic's step alone, with its encoder pass, took 27 ms). For those models
  ``gflop_per_step`` is an estimate, ``gflop_per_step_xla_raw`` XLA's own count.
  ``fraction_of_peak`` = FLOPs per step x steps per second / the matmul rate. For the plain AE
  the analytic count of the network's multiply-adds (`pythae_ae_flops`) is given too: XLA's is
  larger where `nets.ConvTranspose2x` takes its 2x2 taps from input patches, which overlap
  between output phases (1.3x the needed work at 7 x 7).
- ``pythae_s_per_epoch``: pythae's s/epoch on this network from STYLE.md, a constant measured on
  an Intel host (matmul peak 332 GFLOP/s) on 2026-12-02, NOT in this run: the machine differs,
  so ``speedup_vs_pythae`` (and ``meets_2x``, the issue's target of twice pythae's speed) only
  indicates. ``speedup_vs_pythae_peak_scaled`` is an estimate that scales pythae's time by the
  ratio of the two machines' matmul peaks (332 / this run's). The in-run ratios are the honest
  comparison: ``ratio_to_ae`` against ``pythae_ratio_to_ae`` (pythae's model over pythae's AE,
  both from the same STYLE.md session). pythae has no MaskAAE, FlexAE or GMM-DAE.
- ``gmm``: `priors.fit_gmm` (full covariances, k = 10, EM to its default tol 1e-4) on 60,000
  codes of dimension 16: (a) the plain AE's codes of the 60,000 training images, encoded after
  its timed steps (a barely trained AE: its codes take EM many iterations), with jaxae's
  default 5 restarts and with 1 (pythae's sampler: scikit-learn's GaussianMixture, n_init=1,
  tol 1e-3, max_iter 2000); (b) a synthetic mixture of 10 Gaussians in 16-d
  (`synthetic_codes`), 5 restarts. ``first_call_s`` includes compilation where
  ``first_call_compiles`` (a codes shape new to the process); ``s`` is the median
  of up to 3 later calls; ``em_iterations`` per restart. pythae's 14-28 s (STYLE.md, the
  Intel host) is its sampler's ``fit``, which also encodes the training set (batches of 100):
  ``encode_s`` is jaxae's encoding of the 60,000 images (eval mode, batches of 500, compiled
  beforehand), and ``speedup_vs_pythae_encode_plus_fit`` compares the two pipelines.
  ``meets_5x``, the issue's target for the fit: 14 / s >= 5.

Prints progress on stderr, then on stdout a markdown table of the models, one of the GMM fits,
and one JSON line with everything (date, host CPU, load averages at the start and the end).
Runtime on 2 shared CPU cores: about 5 minutes; ``--quick`` (2 steps, 3 rounds, 1,280 images
and codes) with ``--models ae`` 20-30 s.

Seen on 2026-12-06, before the 2x2-tap `nets.ConvTranspose2x` and the faster EM of the same
day (docs/speed.md has their old-against-new measurements); AMD EPYC, 2 cores shared with
other jobs (load average 5.2 at the start, 5.4 at the end; matmul 165 GFLOP/s before the
timed calls, 119 after; jax 0.10.2), s/epoch
(x AE in this run; pythae's x AE): ae 102 (1; 1), vae 104 (0.97; 0.97), beta_vae 101 (0.98;
0.98), rae_l2 102 (0.97; 1.5), rae_gp 175 (1.72; 2.09), wae 90.5 (0.92; 1.16), aae 110 (1.07;
1.06), maskaae 149 (1.34), flexae 147 (1.43), gmmdae 88.2 (0.82); 46-54% of the matmul peak.
The GMM fit on the AE's codes: 6.0 s with 5 restarts (2.4-4.7x faster than pythae's 14-28 s),
1.4 s with 1 (9.8-19.5x); encoding the 60,000 images 25 s. A bound: the plain AE's step is
10.3 GFLOP of multiply-adds, so an epoch takes at least 468 x 10.3 GFLOP / the matmul peak:
23 s at this AMD host's 205 GFLOP/s (STYLE.md), 14.5 s on pythae's 332 GFLOP/s host, where
pythae's 27.6 s runs at 52% of that peak. Twice pythae's speed there (13.8 s) would need more
than its peak.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from benchmarks.train_speed import matmul_reference
from jaxae import config as jconfig
from jaxae import data as jdata
from jaxae import models, objectives, parallel, priors, train

BATCH_SIZE = 128
LATENT_DIM = 16
IMAGE_SHAPE = (28, 28, 1)
NUM_EXAMPLES = 60_000
STEPS_PER_EPOCH = NUM_EXAMPLES // BATCH_SIZE  # 468
SEED = 0
GMM_K = 10
# pythae on this network, s/epoch (STYLE.md, "Performance facts"; Intel host, 2026-12-02).
PYTHAE_S = {"ae": 27.6, "vae": 26.7, "beta_vae": 27.1, "rae_l2": 41.4, "rae_gp": 57.7,
            "wae": 32.1, "aae": 29.3}  # fmt: skip
PYTHAE_PEAK = 332.0  # GFLOP/s, the matmul peak of the host pythae was timed on (STYLE.md)
PYTHAE_GMM_S = (14.0, 28.0)  # its 10-component GMM sampler on 60,000 codes (STYLE.md)
TARGET_SPEEDUP, TARGET_GMM_SPEEDUP = 2.0, 5.0  # the targets
# Each model's description on top of the shared one (`base_spec`): kind, and its settings.
# 'vae' uses the mse head, like pythae's VAE, whose decoder emits the reconstruction only
# (the `vae` head would double the last layer's outputs with a per-pixel scale).
MODELS = {
    "ae": {"kind": "ae"},
    "vae": {"kind": "vae"},
    "beta_vae": {"kind": "vae", "beta": 4.0},
    "rae_l2": {"kind": "rae", "settings": {"regularizer": "l2"}},
    "rae_gp": {"kind": "rae", "settings": {"regularizer": "gp"}},
    "wae": {"kind": "wae"},
    "aae": {"kind": "aae"},
    "maskaae": {"kind": "maskaae"},
    "flexae": {"kind": "flexae"},
    "gmmdae": {"kind": "gmmdae", "settings": {"components": GMM_K}},
}


def parse_args(argv=None) -> argparse.Namespace:
    """The command line (`argv`, None: ``sys.argv``), checked; ``models`` starts with 'ae'."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--quick", action="store_true", help="few steps and codes (smoke test)")
    p.add_argument("--models", default=",".join(MODELS), help=f"subset of {','.join(MODELS)}")
    p.add_argument("--steps", type=int, default=None, help="steps per timed call (default 10)")
    p.add_argument("--repeats", type=int, default=None, help="timed calls per model (>= 3)")
    p.add_argument("--data", default="fashion_mnist", choices=("fashion_mnist", "random"),
                   help="training images: Fashion-MNIST or random uint8 pixels")  # fmt: skip
    p.add_argument("--data-dir", default=None, help="folder with the Fashion-MNIST files")
    p.add_argument("--no-gmm", action="store_true", help="skip the GMM fits")
    args = p.parse_args(argv)
    names = [m for m in args.models.split(",") if m]
    unknown = sorted(set(names) - set(MODELS))
    if unknown:
        p.error(f"--models: unknown {unknown}; choose from {','.join(MODELS)}")
    args.models = ["ae"] + [m for m in names if m != "ae"]  # the reference runs first
    args.repeats = args.repeats or (3 if args.quick else 5)
    if args.repeats < 3:
        p.error("--repeats must be >= 3 (times are medians)")
    args.steps = args.steps or (2 if args.quick else 10)
    if args.steps < 1:
        p.error("--steps must be >= 1")
    args.num_images = 1_280 if args.quick else NUM_EXAMPLES  # also the GMM's codes
    return args


def log(msg: str) -> None:
    """Progress, on stderr (stdout holds the tables and the JSON line)."""
    print(msg, file=sys.stderr, flush=True)


def _rounded(x, digits=4):
    if isinstance(x, list):
        return [_rounded(v, digits) for v in x]
    if isinstance(x, dict):
        return {k: _rounded(v, digits) for k, v in x.items()}
    return float(f"{x:.{digits}g}") if isinstance(x, float) and math.isfinite(x) else x


def xla_flops(compiled) -> float:
    """XLA's FLOP count of a compiled computation (a ``while`` body counts once)."""
    cost = compiled.cost_analysis()
    if isinstance(cost, list | tuple):  # older jax: one dict per program
        cost = cost[0]
    return float(cost.get("flops", float("nan")))


def pythae_ae_flops(batch: int = BATCH_SIZE, width: int = 64, latent: int = LATENT_DIM) -> float:
    """Analytic FLOPs of one plain-AE train step on the 'pythae' net (2 FLOPs a multiply-add).

    Multiply-adds per image, forward: conv 1->w 4x4 s2 (28->14): 14^2 w 16; conv w->2w (14->7):
    7^2 2w 16w; dense 7^2 2w -> K and back: 2 (7^2 2w K); transposed conv 2w->w 4x4 s2 (7->14):
    7^2 2w w 16 (each input pixel feeds 16 outputs); w->1 (14->28): 14^2 w 16. Backward: one
    kernel gradient per layer and one input gradient per layer but the first (the image needs
    none), each as many multiply-adds as the layer's forward pass. Bias, ReLU, loss and Adam:
    not counted.
    """
    w, k = width, latent
    layers = [
        14 * 14 * w * 16,  # conv1 (first: no input gradient)
        7 * 7 * 2 * w * 16 * w,  # conv2
        7 * 7 * 2 * w * k,  # to_code
        k * 7 * 7 * 2 * w,  # from_code
        7 * 7 * 2 * w * w * 16,  # up1
        14 * 14 * w * 16,  # up2
    ]
    forward = sum(layers)
    return 2.0 * batch * (3 * forward - layers[0])


def base_spec(name: str) -> dict:
    """The description `models.build` takes for benchmark model `name`."""
    return {"arch": "pythae", "head": "mse", "latent_dim": LATENT_DIM,
            "image_shape": list(IMAGE_SHAPE), "seed": SEED, **MODELS[name]}  # fmt: skip


def _prepare_fn():
    pre = jdata.Preprocess(scale="unit")  # experiments/train.py's default pixel scale
    return lambda batch, key: {**batch, "image": pre(batch["image"], key)}


def critic_extra_flops(model, graphdef, params, model_state, data, perm, mesh) -> float:
    """FLOPs of the inner steps that XLA's count of a step leaves out: for each parameter group
    stepped ``steps`` > 1 times per iteration, ``steps - 1`` times one step of that group alone
    less the encoder's forward pass (hoisted out of the inner loop; see the module docstring)."""
    extra, prepare = 0.0, _prepare_fn()
    optimizer = train.make_optimizer(jconfig.default().optimizer, STEPS_PER_EPOCH)
    for name, g in model.groups().items():
        if g.steps <= 1:
            continue
        alone = train.grouped(
            {name: train.Group(g.params, objectives.loss_fn(graphdef, g.loss), optimizer, 1)}
        )
        state = train.init_state(params, alone, SEED, model_state)
        chunk = train.make_train_chunk(alone, BATCH_SIZE, mesh, prepare)
        # the sharded program's count is one device's share: times the devices, for the total
        step = xla_flops(chunk.lower(state, data, perm, 0, 1).compile()) * mesh.devices.size

        def encode(p, ms, x):
            return nnx.merge(graphdef, p, ms).encode(prepare({"image": x}, None)["image"])

        x = jax.ShapeDtypeStruct((BATCH_SIZE, *IMAGE_SHAPE), jnp.uint8)
        enc = xla_flops(jax.jit(encode).lower(params, model_state, x).compile())
        extra += (g.steps - 1) * (step - enc)
    return extra


class Case(NamedTuple):
    """A model ready to time: its result row so far, ``run()`` (one timed call of
    ``timed_steps_per_call`` steps, its wall seconds) and ``trained()`` ((model, state, the
    last call's metrics) now)."""

    row: dict
    run: Callable[[], float]
    trained: Callable[[], tuple]


def prepare_model(name: str, data, num_images: int, args, mesh) -> Case:
    """Build model `name`, count its step's FLOPs, compile its chunk and run it once."""
    model = models.build(base_spec(name))
    graphdef, params, model_state = objectives.split(model, train=True)
    update = train.model_update(model, graphdef, jconfig.default().optimizer, STEPS_PER_EPOCH)
    steps = min(args.steps, num_images // BATCH_SIZE)
    key = train.data_key(SEED)
    perms = [train.epoch_permutation(key, e, num_images) for e in range(args.repeats + 1)]
    host_state = train.init_state(params, update, SEED, model_state)
    extra = critic_extra_flops(model, graphdef, params, model_state, data, perms[0], mesh)
    chunk = train.make_train_chunk(update, BATCH_SIZE, mesh, _prepare_fn())
    box = {"state": parallel.replicate(host_state, mesh), "calls": 0}

    # First call: trace + compile (ahead of time, so the same executable is timed) + one run.
    t0 = time.perf_counter()
    compiled = chunk.lower(box["state"], data, perms[0], 0, steps).compile()
    box["state"], box["metrics"] = compiled(box["state"], data, perms[0], 0)
    jax.block_until_ready(box["metrics"])
    compile_s = time.perf_counter() - t0

    def run() -> float:
        box["calls"] += 1
        perm = perms[1 + (box["calls"] - 1) % args.repeats]
        t0 = time.perf_counter()
        box["state"], box["metrics"] = compiled(box["state"], data, perm, 0)
        jax.block_until_ready(box["metrics"])
        return time.perf_counter() - t0

    flops_raw = xla_flops(compiled) * mesh.devices.size  # the count is one device's share
    spec = MODELS[name]
    settings = {**spec.get("settings", {}),
                **{k: v for k, v in spec.items() if k not in ("kind", "settings")}}  # fmt: skip
    row = {"model": name, "kind": spec["kind"], "settings": settings,
           "update": "single" if len(model.groups()) == 1 else "grouped",
           "groups": {n: g.steps for n, g in model.groups().items()},
           "num_params": models.num_params(model), "timed_steps_per_call": steps,
           "compile_s": compile_s, "gflop_per_step_xla_raw": flops_raw / 1e9,
           "gflop_per_step": (flops_raw + extra) / 1e9}  # fmt: skip
    return Case(row, run, lambda: (model, box["state"], box["metrics"]))


def finish_row(case: Case, times: list[float], ratios: list[float]) -> dict:
    """`case`'s row with its timings: ``times`` [repeats] seconds per call, ``ratios`` each
    call's time over the plain AE's call in the same round."""
    row = dict(case.row)
    per_epoch = [t * STEPS_PER_EPOCH / row["timed_steps_per_call"] for t in times]
    s = statistics.median(per_epoch)
    metrics = case.trained()[2]
    losses = {k: float(v[-1]) for k, v in metrics.items() if k.endswith("loss")}
    if not all(math.isfinite(v) for v in losses.values()):
        raise FloatingPointError(f"{row['model']}: non-finite loss after its timed steps: {losses}")
    row.update(losses_last=losses, s_per_epoch=s, s_per_epoch_all=per_epoch,
               ms_per_step=1e3 * s / STEPS_PER_EPOCH, ratio_to_ae=statistics.median(ratios),
               ratio_to_ae_all=ratios,
               achieved_gflop_s=row["gflop_per_step"] * STEPS_PER_EPOCH / s)  # fmt: skip
    return row


def encode_codes(model, state, images: np.ndarray, batch: int = 500) -> tuple[np.ndarray, float]:
    """Codes [N, K] of `images` by the trained model (eval mode, the trainer's pixel scale) and
    the seconds the pass took (compiled beforehand on the first batch)."""
    prepare = _prepare_fn()
    eval_graphdef = objectives.split(model, train=False)[0]

    @jax.jit
    def encode(p, ms, x):
        return nnx.merge(eval_graphdef, p, ms).encode(prepare({"image": x}, None)["image"])

    p, ms = state["params"], state["model_state"]
    jax.block_until_ready(encode(p, ms, images[:batch]))  # compile, and the last batch's shape
    jax.block_until_ready(encode(p, ms, images[len(images) - (len(images) % batch or batch) :]))
    t0 = time.perf_counter()
    codes = [np.asarray(encode(p, ms, images[i : i + batch])) for i in range(0, len(images), batch)]
    return np.concatenate(codes), time.perf_counter() - t0


def synthetic_codes(n: int, d: int = LATENT_DIM, k: int = GMM_K, seed: int = SEED) -> np.ndarray:
    """n codes [n, d] from a mixture of k equally weighted Gaussians: means N(0, 9 I), random
    full covariances A A^T / d + 0.1 I."""
    rng = np.random.default_rng(seed)
    means = 3.0 * rng.standard_normal((k, d))
    a = rng.standard_normal((k, d, d))
    chol = np.linalg.cholesky(a @ np.swapaxes(a, 1, 2) / d + 0.1 * np.eye(d))
    comp = rng.integers(0, k, n)
    eps = rng.standard_normal((n, d))
    return (means[comp] + np.einsum("nij,nj->ni", chol[comp], eps)).astype(np.float32)


_GMM_FITTED: set = set()  # fit_gmm compiles once per (shape, restarts) in a process


def gmm_case(label: str, codes: np.ndarray, restarts: int, repeats: int) -> dict:
    """Time `priors.fit_gmm(codes, 10, restarts=restarts)`: the first call (it compiles, for
    shapes and restarts new to the process) and `repeats` later ones."""
    # EM compiles once per codes shape, whatever the number of restarts (`priors.fit_gmm`)
    compiles = codes.shape not in _GMM_FITTED
    _GMM_FITTED.add(codes.shape)
    key = jax.random.PRNGKey(SEED)
    t0 = time.perf_counter()
    _, info = priors.fit_gmm(codes, GMM_K, key=key, restarts=restarts, return_info=True)
    first = time.perf_counter() - t0
    times = []
    for i in range(repeats):
        t0 = time.perf_counter()
        priors.fit_gmm(codes, GMM_K, key=jax.random.fold_in(key, i + 1), restarts=restarts)
        times.append(time.perf_counter() - t0)
    s = statistics.median(times)
    return {"codes": label, "n": int(codes.shape[0]), "dim": int(codes.shape[1]), "k": GMM_K,
            "restarts": restarts, "first_call_s": first, "first_call_compiles": compiles,
            "s": s, "s_all": times, "em_iterations": [int(i) for i in info.iterations],
            "mean_log_likelihood": float(info.log_likelihood[info.best]),
            "pythae_s": list(PYTHAE_GMM_S), "speedup_vs_pythae_low": PYTHAE_GMM_S[0] / s,
            "speedup_vs_pythae_high": PYTHAE_GMM_S[1] / s,
            "meets_5x": PYTHAE_GMM_S[0] / s >= TARGET_GMM_SPEEDUP}  # fmt: skip


def host_cpu() -> str:
    """The CPU's model name (`lscpu`'s 'Model name', from /proc/cpuinfo)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _fmt(x, spec=".3g"):
    if x is None:
        return "-"
    if isinstance(x, bool):
        return "yes" if x else "no"
    return format(x, spec)


def markdown(rows: list[dict], gmms: list[dict], mm: float) -> str:
    """The two result tables."""
    out = [
        f"Train step on arch 'pythae' (1-64-128 4x4 s2, latent {LATENT_DIM}, batch {BATCH_SIZE}"
        f"), s/epoch = {STEPS_PER_EPOCH} steps; matmul peak {mm:.0f} GFLOP/s in this run. pythae:"
        " STYLE.md's constants (Intel host, peak 332 GFLOP/s, another day), not this run.",
        "",
        "| model | update | s/epoch | ms/step | x AE | pythae x AE | GFLOP/step | GFLOP/s "
        "| of peak | compile s | pythae s/epoch | speedup vs pythae | peak-scaled est. "
        "| meets 2x |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        out.append(
            f"| {r['model']} | {r['update']} | {_fmt(r['s_per_epoch'])} "
            f"| {_fmt(r['ms_per_step'])} | {_fmt(r['ratio_to_ae'])} "
            f"| {_fmt(r['pythae_ratio_to_ae'])} | {_fmt(r['gflop_per_step'])} "
            f"| {_fmt(r['achieved_gflop_s'])} | {_fmt(r['fraction_of_peak'], '.0%')} "
            f"| {_fmt(r['compile_s'])} | {_fmt(r['pythae_s_per_epoch'])} "
            f"| {_fmt(r['speedup_vs_pythae'])} | {_fmt(r['speedup_vs_pythae_peak_scaled'])} "
            f"| {_fmt(r['meets_2x'])} |"
        )
    ae = rows[0]
    if "gflop_per_step_analytic" in ae:
        out += [
            "",
            "x AE: the median over rounds of each call over the AE's call in the same round. "
            f"The AE's step: XLA counts {ae['gflop_per_step']:.3g} GFLOP; the network's "
            f"multiply-adds are {ae['gflop_per_step_analytic']:.3g} GFLOP (`pythae_ae_flops`).",
        ]
    if gmms:
        out += [
            "",
            f"EM fit, `priors.fit_gmm` (full covariances, k={GMM_K}), against pythae's GMM sampler "
            f"fit, {PYTHAE_GMM_S[0]:g}-{PYTHAE_GMM_S[1]:g} s (STYLE.md; it encodes the training "
            "set, then runs scikit-learn's GaussianMixture with one start).",
            "",
            "| codes | n x d | restarts | EM iterations | first call s | fit s | encode s "
            "| speedup vs pythae: fit | encode + fit | meets 5x (fit) |",
            "|---|---|---:|---|---:|---:|---:|---|---|---|",
        ]
        for g in gmms:
            first = _fmt(g["first_call_s"]) + ("" if g["first_call_compiles"] else " (compiled)")
            both = g.get("speedup_vs_pythae_encode_plus_fit")
            out.append(
                f"| {g['codes']} | {g['n']} x {g['dim']} | {g['restarts']} "
                f"| {','.join(map(str, g['em_iterations']))} | {first} | {_fmt(g['s'])} "
                f"| {_fmt(g.get('encode_s'))} "
                f"| {g['speedup_vs_pythae_low']:.3g}-{g['speedup_vs_pythae_high']:.3g}x "
                f"| {f'{both[0]:.3g}-{both[1]:.3g}x' if both else '-'} "
                f"| {_fmt(g['meets_5x'])} |"
            )
    return "\n".join(out)


def main(argv=None) -> dict:
    """Run the benchmark; print the tables and the JSON line; return that summary (rounded)."""
    args = parse_args(argv)
    t_start = time.perf_counter()
    load_start = os.getloadavg()
    mm = matmul_reference(2048, 9)
    log(f"matmul {mm['gflop_s']:.0f} GFLOP/s; load {load_start}")
    mesh = parallel.data_mesh()
    if args.data == "fashion_mnist":
        images = jdata.load("fashion_mnist", data_dir=args.data_dir).train.images
        images = images[: args.num_images]
    else:
        rng = np.random.default_rng(SEED)
        images = rng.integers(0, 256, (args.num_images, *IMAGE_SHAPE), dtype=np.uint8)
    data = parallel.replicate({"image": images}, mesh)

    cases = {}
    for name in args.models:
        log(f"compiling {name} ...")
        cases[name] = prepare_model(name, data, len(images), args, mesh)
    # Timed calls round-robin over the models, so that a change of the machine's load falls on
    # all of them alike; each ratio to the AE is of two calls of the same round.
    times = {name: [] for name in cases}
    for r in range(args.repeats):
        log(f"timing round {r + 1}/{args.repeats} ...")
        for name, case in cases.items():
            times[name].append(case.run())
    again = matmul_reference(2048, 9)
    # The machine's peak: the better of the two measurements (the load lowers both).
    peak = max(mm["gflop_s"], again["gflop_s"])
    rows = []
    for name, case in cases.items():
        ratios = [t / t_ae for t, t_ae in zip(times[name], times["ae"], strict=True)]
        row = finish_row(case, times[name], ratios)
        if name == "ae":
            row["gflop_per_step_analytic"] = pythae_ae_flops() / 1e9
        pythae = PYTHAE_S.get(name)
        row["fraction_of_peak"] = row["achieved_gflop_s"] / peak
        row["pythae_s_per_epoch"] = pythae
        row["pythae_ratio_to_ae"] = pythae / PYTHAE_S["ae"] if pythae else None
        row["speedup_vs_pythae"] = pythae / row["s_per_epoch"] if pythae else None
        scaled = pythae * PYTHAE_PEAK / peak if pythae else None
        row["speedup_vs_pythae_peak_scaled"] = scaled / row["s_per_epoch"] if pythae else None
        row["meets_2x"] = row["speedup_vs_pythae"] >= TARGET_SPEEDUP if pythae else None
        rows.append(row)

    gmms = []
    if not args.no_gmm:
        log("encoding the codes and fitting GMMs ...")
        model, state, _ = cases["ae"].trained()
        codes, encode_s = encode_codes(model, state, images)
        steps = rows[0]["timed_steps_per_call"] * (args.repeats + 1)
        label = f"plain AE's codes ({args.data}, AE after {steps} steps)"
        fit_repeats = min(args.repeats, 3)
        for restarts in (5, 1):  # jaxae's default; pythae's sampler (scikit-learn's n_init=1)
            g = gmm_case(label, codes, restarts, fit_repeats)
            g.update(encode_s=encode_s, encode_plus_fit_s=encode_s + g["s"])
            g["speedup_vs_pythae_encode_plus_fit"] = [
                x / g["encode_plus_fit_s"] for x in PYTHAE_GMM_S
            ]
            gmms.append(g)
        synthetic = synthetic_codes(len(codes))
        gmms.append(gmm_case("synthetic 10-Gaussian mixture", synthetic, 5, fit_repeats))

    summary = {
        "benchmark": "regularized_speed",
        "date": datetime.date.today().isoformat(),
        "host_cpu": host_cpu(),
        "cpus": len(os.sched_getaffinity(0)),
        "backend": jax.default_backend(),
        "devices": mesh.devices.size,
        "jax": jax.__version__,
        "load_avg_start": list(load_start),
        "load_avg_end": list(os.getloadavg()),
        "matmul_gflop_s_start": mm["gflop_s"],
        "matmul_gflop_s_after_training": again["gflop_s"],
        "matmul_gflop_s_peak": peak,
        "data": f"{len(images)} {args.data} images",
        "steps_per_epoch": STEPS_PER_EPOCH,
        "timed_steps_per_call": args.steps,
        "repeats": args.repeats,
        "quick": args.quick,
        "models": rows,
        "gmm": gmms,
        "pythae_note": "pythae's numbers are STYLE.md constants (Intel host, matmul peak "
        "332 GFLOP/s, 2026-12-02), not measured in this run",
        "total_s": time.perf_counter() - t_start,
    }
    summary = _rounded(summary)
    print(markdown(summary["models"], summary["gmm"], peak), flush=True)
    print(json.dumps(summary), flush=True)
    return summary


if __name__ == "__main__":
    main()
