"""Training-speed benchmark of jaxae's fast path, `jaxae.train.make_train_chunk`.

Command (what `make bench` runs):  python -m benchmarks.train_speed
Smoke run:                          python -m benchmarks.train_speed --quick --cases mlp_ae

Prints one JSON line per case, all measured in this one process (the machines are shared and
timings vary up to 1.6x between runs, so compare ratios within one run, never across runs):

- ``matmul``: the float32 matmul rate of this machine, a jitted 2048x2048 ``a @ b`` (best of
  several calls). It is the reference of every ``ratio_to_matmul``.
- ``matmul_mlp_shapes``: the five matmuls of one MLP train step (3 of them with transposed
  operands), in a `lax.scan` over an epoch's steps: the ceiling for the MLP's step at batch 128.
- ``mlp_ae``: the 784-32-784 autoencoder (`models.Autoencoder` with the `mse` head, i.e.
  `nets.MLPAutoencoder`), batch 128, Adam 1e-3, MSE, Fashion-MNIST (60k): one epoch (468
  steps) per call of the scanned chunk, on-device uint8 data, ``prepare`` =
  `Preprocess('unit')` as in `experiments/train.py` (`experiments/configs/demo.py`).
- ``conv_ae``: the conv autoencoder, same settings; it is slow, so each call runs
  ``--conv-steps`` steps and ``s_per_epoch`` is extrapolated (``"extrapolated": true``).
- ``heads``: every K=1 MLP likelihood head of the VPAE (`jaxae.heads`), ``--head-steps`` steps
  per timed call, extrapolated to an epoch, with ``ratio_to_mse`` against the mse head measured
  in the same run (the paper: normal_full and t_full ~60 s/epoch on a GTX 1060).
- ``vpae_cnn``: the VPAE's CNN (Table 2) with `matrix_normal_identity` K=1 and
  `matrix_normal_full` K=10, ``--conv-steps`` steps per call, extrapolated, against the same
  network written plainly (`PlainCNN`: patches @ kernel for both convolutions, ReLU at full
  resolution, max-pool by reshape and max) measured in the same run: ``speedup``.
- ``devices``: the MLP epoch with ``JAX_NUM_CPU_DEVICES=1`` and ``=2``, each in a subprocess
  (XLA fixes the device count at process start), and their ratio.
- ``matmul_recheck``: the matmul rate again at the end, to see whether the load drifted.

Per case: ``compile_s`` is the first call's time (trace + compile + one run), apart from
``s_per_epoch``, the median over ``repeats`` timed calls after it. FLOPs come from XLA's cost
analysis of one compiled train step (`train.make_train_step`; XLA counts a ``while`` body once,
so the scanned chunk's own count is per step, not per call) and, for the MLP, from the analytic
count of `mlp_flops_per_step`. ``target_met``: the MLP reaches >= 40% of the matmul rate.

Runtime on 2 shared CPU cores: about 40 s; ``--quick`` under 35 s, ``--quick --cases mlp_ae``
about 8 s. Seen on 2026-11-26 (2 shared CPU cores, jax 0.10.2): matmul 200-285 GFLOP/s;
matmul_mlp_shapes 0.38-0.45 of it; mlp_ae 0.28-0.36 s/epoch, 0.24-0.26 of the matmul rate, so
``target_met`` is false: the MLP-shaped matmuls alone (batch 128) barely reach 0.4, and Adam,
the loss and the gather add ~40% on top; no XLA:CPU flag tried helped (xnnpack, onednn,
single-threaded Eigen, fast math, the old runtime). conv_ae 23-28 s/epoch (before every
convolution became a matmul, `nets.conv2d_same`, 700-750 s: inside `lax.scan` XLA:CPU ran the
kernel gradients as naive loops, jax-ml/jax#12868); 2 devices about as fast as 1.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from jaxae import data as jdata
from jaxae import models, nets, objectives, parallel, train
from jaxae.heads import HEADS

TARGET_RATIO = 0.4  # the target: MLP epoch at >= 40% of the matmul rate
BATCH_SIZE = 128
LATENT_DIM = 32
LEARNING_RATE = 1e-3
SEED = 0
CASES = ("mlp_ae", "conv_ae", "devices", "heads", "vpae_cnn")
CNN_CASES = (("matrix_normal_identity", 1), ("matrix_normal_full", 10))
_REPO_ROOT = Path(__file__).resolve().parents[1]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--quick", action="store_true", help="few steps and repeats (smoke test)")
    p.add_argument(
        "--cases",
        default=",".join(CASES),
        help=f"comma-separated subset of {','.join(CASES)} (the matmul reference always runs)",
    )
    p.add_argument("--data-dir", default=None, help="folder with the Fashion-MNIST files")
    p.add_argument("--repeats", type=int, default=None, help="timed calls per case (>= 3)")
    p.add_argument("--conv-steps", type=int, default=None, help="steps per timed conv call")
    p.add_argument("--head-steps", type=int, default=None, help="steps per timed head call")
    p.add_argument(
        "--heads", default=",".join(HEADS), help="heads of the heads case (mse always runs first)"
    )
    p.add_argument("--devices-child", type=int, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    cases = [c for c in args.cases.split(",") if c]
    unknown = sorted(set(cases) - set(CASES))
    if unknown:
        p.error(f"unknown cases {unknown}; choose from {','.join(CASES)}")
    args.cases = cases
    if args.repeats is None:
        args.repeats = 3 if args.quick else 5
    if args.repeats < 3:
        p.error("--repeats must be >= 3 (s_per_epoch is a median)")
    if args.conv_steps is None:
        args.conv_steps = 1 if args.quick else 10
    if args.head_steps is None:
        args.head_steps = 5 if args.quick else 40
    heads = [h for h in args.heads.split(",") if h]
    if set(heads) - set(HEADS):
        p.error(f"unknown heads {sorted(set(heads) - set(HEADS))}; choose from {','.join(HEADS)}")
    args.heads = ["mse"] + [h for h in heads if h != "mse"]  # the reference
    # MLP steps per timed call: a whole epoch, or a few hundred steps when quick.
    args.mlp_steps = 200 if args.quick else None
    return args


def emit(line: dict) -> None:
    print(json.dumps(line), flush=True)


def _rounded(x, digits=4):
    return float(f"{x:.{digits}g}") if isinstance(x, float) and math.isfinite(x) else x


def _timed_calls(fn, n: int) -> list[float]:
    """Wall seconds of `n` calls of ``fn()``, each waited for."""
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        out.append(time.perf_counter() - t0)
    return out


def _xla_flops(compiled) -> float:
    """XLA's FLOP count of a compiled computation (a ``while`` body counts once)."""
    cost = compiled.cost_analysis()
    if isinstance(cost, list | tuple):  # older jax: one dict per program
        cost = cost[0]
    return float(cost.get("flops", float("nan")))


# --- References --------------------------------------------------------------------------------


def matmul_reference(n: int, repeats: int) -> dict:
    """float32 GFLOP/s of a jitted ``a @ b`` with [n, n] operands: best and median of calls."""
    a = jax.random.normal(jax.random.PRNGKey(1), (n, n), jnp.float32)
    b = jax.random.normal(jax.random.PRNGKey(2), (n, n), jnp.float32)
    f = jax.jit(jnp.matmul)
    jax.block_until_ready(f(a, b))
    times = _timed_calls(lambda: f(a, b), repeats)
    flops = 2 * n**3
    return {
        "n": n,
        "gflop_s": flops / min(times) / 1e9,
        "gflop_s_median": flops / statistics.median(times) / 1e9,
    }


def mlp_matmuls_reference(steps: int, repeats: int, d: int = 784, h: int = LATENT_DIM) -> dict:
    """GFLOP/s of the five matmuls of one MLP train step, in a `lax.scan` of `steps` steps.

    Forward ``x @ W1`` [B,d]x[d,h] and ``z @ W2`` [B,h]x[h,d]; backward ``z.T @ dy``,
    ``dy @ W2.T`` and ``x.T @ dz`` in the operand layouts autodiff produces. A tiny carry makes
    each step depend on the previous one, so XLA can neither hoist nor drop them.
    """
    b = BATCH_SIZE
    keys = jax.random.split(jax.random.PRNGKey(3), 4)
    x = jax.random.normal(keys[0], (b, d))
    w1 = jax.random.normal(keys[1], (d, h))
    w2 = jax.random.normal(keys[2], (h, d))
    dy0 = jax.random.normal(keys[3], (b, d))
    tn = (((0,), (0,)), ((), ()))  # contract the leading axes: a.T @ b
    nt = (((1,), (1,)), ((), ()))  # contract the trailing axes: a @ b.T

    @jax.jit
    def run(x, w1, w2, dy0):
        def body(c, _):
            xc = x + c
            z = xc @ w1
            y = z @ w2
            dy = dy0 + 1e-9 * y
            dw2 = jax.lax.dot_general(z, dy, tn)
            dz = jax.lax.dot_general(dy, w2, nt)
            dw1 = jax.lax.dot_general(xc, dz, tn)
            return c + 1e-12 * (dw2[0, 0] + dz[0, 0] + dw1[0, 0]), None

        return jax.lax.scan(body, jnp.float32(0), None, length=steps)[0]

    jax.block_until_ready(run(x, w1, w2, dy0))
    times = _timed_calls(lambda: run(x, w1, w2, dy0), repeats)
    flops = steps * 10 * b * d * h  # 5 matmuls of 2*B*d*h FLOPs each
    return {
        "shapes": f"B={b}: [B,{d}]x[{d},{h}], [B,{h}]x[{h},{d}], and their 3 backward matmuls",
        "steps": steps,
        "gflop_s": flops / min(times) / 1e9,
        "gflop_s_median": flops / statistics.median(times) / 1e9,
    }


def mlp_flops_per_step(b: int, d: int = 784, h: int = LATENT_DIM) -> dict[str, float]:
    """Analytic FLOPs of one MLP autoencoder train step (matmuls only; 2 FLOPs a multiply-add).

    forward     = 2*B*(d*h + h*d)              = 4*B*d*h   (encoder and decoder matmuls)
    rule        = forward + 2 * forward        = 12*B*d*h  (the usual "backward = 2x forward")
    exact       = forward + 3 * (2*B*d*h)      = 10*B*d*h  (backward: dW2, dz, dW1; no dx, as
                                                            the input needs no gradient)
    Bias adds, ReLU, the loss and Adam add ~5% more (counted by XLA, not here).
    """
    forward = 2 * b * (d * h + h * d)
    return {"rule": 3 * forward, "exact": forward + 3 * 2 * b * d * h}


# --- Training cases ----------------------------------------------------------------------------


def _setup(model_name: str, images: np.ndarray, mesh):
    """Model state, update, preprocessing and on-device data, as `experiments/train.py`.

    `model_name` is 'mlp' or 'conv' (autoencoders: the `mse` head), 'head:<name>' for the
    VPAE's MLP with that likelihood head (K=1), or 'cnn:<head>:<K>' / 'cnn-plain:<head>:<K>' for
    the VPAE's CNN (ours / `PlainCNN`); each trained on its objective (`objectives.loss_fn`).
    Returns ``(params, model_state, update, prepare, data)``.
    """
    shape = images.shape[1:]
    if model_name.startswith("head:"):
        spec = models.vpae_spec(model_name[5:], 1, "mlp", shape)
        model = models.build({**spec, "seed": SEED})
    elif model_name.startswith("cnn"):  # cnn:<head>:<K> or cnn-plain:<head>:<K>
        kind, name, k = model_name.split(":")
        model = models.build({**models.vpae_spec(name, int(k), "cnn", shape), "seed": SEED})
        if kind == "cnn-plain":
            head = model.head
            model.net = PlainCNN(head.image_shape, head.num_params, rngs=nnx.Rngs(params=SEED))
    else:
        spec = {"kind": "ae", "arch": model_name, "head": "mse", "latent_dim": LATENT_DIM,
                "image_shape": list(shape), "seed": SEED}  # fmt: skip
        model = models.build(spec)
    graphdef, params, model_state = objectives.split(model, train=True)
    update = train.single(objectives.loss_fn(graphdef), optax.adam(LEARNING_RATE))
    pre = jdata.Preprocess(scale="unit")

    def prepare(batch, key):
        return {**batch, "image": pre(batch["image"], key)}

    data = parallel.replicate({"image": images}, mesh)
    return params, model_state, update, prepare, data


class PlainCNN(nets.VPAECNN):
    """The VPAE CNN written plainly (the vpae_cnn case's reference): patches @ kernel for both
    convolutions, ReLU at full resolution, then the max-pool by reshape and max."""

    def encode(self, x):
        conv = self.conv1
        h = jax.nn.relu(nets.conv2d_same(x, conv.kernel[...], taps="input") + conv.bias[...])
        b, hh, ww, c = h.shape
        return h.reshape(b, hh // 2, 2, ww // 2, 2, c).max(axis=(2, 4))

    def decode(self, z):
        conv = self.conv2
        h = nets.conv2d_same(z, conv.kernel[...], taps="input") + conv.bias[...]
        h = jnp.repeat(jnp.repeat(h, 2, axis=1), 2, axis=2)
        return h.reshape(h.shape[0], -1)[:, : self.out_features]


def vpae_cnn_case(images, args, mesh) -> list[dict]:
    """s/epoch of the VPAE CNN, ours against `PlainCNN` in the same run."""
    lines = []
    for name, k in CNN_CASES:
        r = {
            kind: time_training(f"{kind}:{name}:{k}", images, args.conv_steps, args.repeats,
                                mesh, False)
            for kind in ("cnn-plain", "cnn")
        }  # fmt: skip
        lines.append(
            {
                "case": "vpae_cnn",
                "head": name,
                "K": k,
                "timed_steps_per_call": r["cnn"]["timed_steps_per_call"],
                "extrapolated": r["cnn"]["extrapolated"],
                "s_per_epoch": r["cnn"]["s_per_epoch"],
                "s_per_epoch_plain": r["cnn-plain"]["s_per_epoch"],
                "speedup": r["cnn-plain"]["s_per_epoch"] / r["cnn"]["s_per_epoch"],
                "loss_first": r["cnn"]["loss_first"],
                "loss_first_plain": r["cnn-plain"]["loss_first"],
            }
        )
    return lines


def heads_case(images, args, mesh) -> list[dict]:
    """s/epoch of every K=1 MLP head of the VPAE, relative to `mse` measured in this run."""
    lines, ref = [], None
    for name in args.heads:
        r = time_training(f"head:{name}", images, args.head_steps, args.repeats, mesh, False)
        ref = ref or r["s_per_epoch"]
        lines.append(
            {
                "case": "head",
                "head": name,
                "K": 1,
                "compile_s": r["compile_s"],
                "timed_steps_per_call": r["timed_steps_per_call"],
                "extrapolated": r["extrapolated"],
                "s_per_epoch": r["s_per_epoch"],
                "ratio_to_mse": r["s_per_epoch"] / ref,
                "loss_first": r["loss_first"],
                "loss_last": r["loss_last"],
            }
        )
    return lines


def time_training(
    model_name: str, images: np.ndarray, steps: int | None, repeats: int, mesh, xla_count=True
) -> dict:
    """Time `make_train_chunk` calls of `steps` steps (None: a whole epoch) on `images`."""
    params, model_state, update, prepare, data = _setup(model_name, images, mesh)
    num_examples = images.shape[0]
    steps_per_epoch = num_examples // BATCH_SIZE
    steps = min(steps or steps_per_epoch, steps_per_epoch)
    key = train.data_key(SEED)
    perms = [train.epoch_permutation(key, e, num_examples) for e in range(repeats + 1)]
    state = parallel.replicate(train.init_state(params, update, SEED, model_state), mesh)
    jax.block_until_ready((perms, state, data))
    chunk = train.make_train_chunk(update, BATCH_SIZE, mesh, prepare)

    # First call: trace + compile (ahead of time, so the same executable is timed) + one run.
    t0 = time.perf_counter()
    compiled = chunk.lower(state, data, perms[0], 0, steps).compile()
    compile_only = time.perf_counter() - t0
    state, metrics = compiled(state, data, perms[0], 0)
    jax.block_until_ready((state, metrics))
    compile_s = time.perf_counter() - t0
    loss_first = float(metrics["loss"][0])

    calls = iter(perms[1:])

    def call():
        nonlocal state, metrics
        state, metrics = compiled(state, data, next(calls), 0)
        return state, metrics

    times = _timed_calls(call, repeats)
    scale = steps_per_epoch / steps
    per_epoch = [t * scale for t in times]
    out = {
        "steps_per_epoch": steps_per_epoch,
        "timed_steps_per_call": steps,
        "extrapolated": steps != steps_per_epoch,
        "repeats": repeats,
        "compile_s": compile_s,
        "compile_only_s": compile_only,
        "s_per_epoch": statistics.median(per_epoch),
        "s_per_epoch_min": min(per_epoch),
        "s_per_epoch_all": per_epoch,
        "examples_per_s": steps_per_epoch * BATCH_SIZE / statistics.median(per_epoch),
        "loss_first": loss_first,
        "loss_last": float(metrics["loss"][-1]),
    }
    if xla_count:
        # XLA's count for one step; the chunk's own count shows that a while body counts once.
        # `make_train_step` wraps its jitted step in a host-side pixel check (a no-op for these
        # uint8 batches), which has no `.lower`: jit the wrapper to count the step inside.
        step_fn = jax.jit(train.make_train_step(update, mesh, prepare))
        batch = parallel.shard_batch({"image": images[:BATCH_SIZE]}, mesh)
        out["gflop_per_step_xla"] = _xla_flops(step_fn.lower(state, batch).compile()) / 1e9
        out["gflop_per_call_xla_chunk"] = _xla_flops(compiled) / 1e9
    return out


def training_case(name: str, model_name: str, images, steps, args, mesh, mm: dict) -> dict:
    r = time_training(model_name, images, steps, args.repeats, mesh)
    line = {
        "case": name,
        "model": model_name,
        "batch_size": BATCH_SIZE,
        "devices": mesh.devices.size,
        "backend": jax.default_backend(),
        **r,
    }
    flops = r["gflop_per_step_xla"]
    line["flops_used"] = "xla_step"
    if model_name == "mlp":
        analytic = mlp_flops_per_step(BATCH_SIZE, math.prod(images.shape[1:]))
        line["gflop_per_step_analytic_rule"] = analytic["rule"] / 1e9
        line["gflop_per_step_analytic_exact"] = analytic["exact"] / 1e9
        # XLA's step count is the matmuls plus ~5% elementwise work; if it strays further from
        # the exact matmul count, it is off (e.g. a while body counted once): use the analytic.
        if not 0.95 <= flops / line["gflop_per_step_analytic_exact"] <= 1.25:
            flops = line["gflop_per_step_analytic_exact"]
            line["flops_used"] = "analytic_exact"
    line["gflop_per_step"] = flops
    steps_per_s = r["steps_per_epoch"] / r["s_per_epoch"]
    line["achieved_gflop_s"] = flops * steps_per_s
    line["achieved_gflop_s_best"] = flops * r["steps_per_epoch"] / r["s_per_epoch_min"]
    line["matmul_gflop_s"] = mm["gflop_s"]
    line["ratio_to_matmul"] = line["achieved_gflop_s"] / mm["gflop_s"]
    line["ratio_to_matmul_best"] = line["achieved_gflop_s_best"] / mm["gflop_s"]
    if model_name == "mlp":
        line["target_ratio"] = TARGET_RATIO
        line["target_met"] = line["ratio_to_matmul"] >= TARGET_RATIO
    return line


def devices_case(args) -> dict:
    """MLP s/epoch with 1 and 2 CPU devices, each in its own process."""
    line = {"case": "devices", "model": "mlp", "batch_size": BATCH_SIZE}
    for n in (1, 2):
        cmd = [sys.executable, "-m", "benchmarks.train_speed", "--devices-child", str(n)]
        cmd += ["--repeats", str(args.repeats)] + (["--quick"] if args.quick else [])
        if args.data_dir:
            cmd += ["--data-dir", str(args.data_dir)]
        env = {**os.environ, "JAX_NUM_CPU_DEVICES": str(n), "JAX_PLATFORMS": "cpu"}
        proc = subprocess.run(cmd, cwd=_REPO_ROOT, env=env, capture_output=True, text=True)
        lines = [x for x in proc.stdout.splitlines() if x.startswith("{")]
        if proc.returncode or not lines:
            line[f"error_{n}"] = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
            continue
        child = json.loads(lines[-1])
        line[f"s_per_epoch_{n}"] = child["s_per_epoch"]
        line[f"s_per_epoch_min_{n}"] = child["s_per_epoch_min"]
        line[f"compile_s_{n}"] = child["compile_s"]
        line["extrapolated"] = child["extrapolated"]
    if "s_per_epoch_1" in line and "s_per_epoch_2" in line:
        line["ratio_2_over_1"] = line["s_per_epoch_2"] / line["s_per_epoch_1"]
        line["speedup_2_vs_1"] = line["s_per_epoch_1"] / line["s_per_epoch_2"]
    return line


def devices_child(args) -> None:
    n = args.devices_child
    if jax.device_count() != n:
        raise SystemExit(f"--devices-child {n}: JAX sees {jax.device_count()} devices")
    ds = jdata.load("fashion_mnist", data_dir=args.data_dir)
    r = time_training(
        "mlp", ds.train.images, args.mlp_steps, args.repeats, parallel.data_mesh(), False
    )
    emit({"devices": n, **r})


# --- Main --------------------------------------------------------------------------------------


def main(argv=None) -> list[dict]:
    args = parse_args(argv)
    if args.devices_child is not None:
        devices_child(args)
        return []
    t_start = time.perf_counter()
    out = []

    def report(line):
        line = {k: _rounded(v) for k, v in line.items()}
        line = {k: [_rounded(x) for x in v] if isinstance(v, list) else v for k, v in line.items()}
        out.append(line)
        emit(line)

    mm_repeats = 5 if args.quick else 9
    mm = matmul_reference(2048, mm_repeats)
    report(
        {
            "case": "matmul",
            "dtype": "float32",
            **mm,
            "backend": jax.default_backend(),
            "cpus": len(os.sched_getaffinity(0)),
            "jax": jax.__version__,
            "xla_flags": os.environ.get("XLA_FLAGS", ""),
        }
    )
    if {"mlp_ae", "conv_ae", "heads", "vpae_cnn"} & set(args.cases):
        ds = jdata.load("fashion_mnist", data_dir=args.data_dir)
        mesh = parallel.data_mesh()
    if "mlp_ae" in args.cases:
        ref = mlp_matmuls_reference(
            args.mlp_steps or ds.train.images.shape[0] // BATCH_SIZE, args.repeats
        )
        report(
            {"case": "matmul_mlp_shapes", **ref, "ratio_to_matmul": ref["gflop_s"] / mm["gflop_s"]}
        )
        line = training_case("mlp_ae", "mlp", ds.train.images, args.mlp_steps, args, mesh, mm)
        line["ratio_to_mlp_shaped_matmuls"] = line["achieved_gflop_s"] / ref["gflop_s"]
        report(line)
    if "conv_ae" in args.cases:
        report(training_case("conv_ae", "conv", ds.train.images, args.conv_steps, args, mesh, mm))
    if "devices" in args.cases:
        report(devices_case(args))
    if "heads" in args.cases:
        for line in heads_case(ds.train.images, args, mesh):
            report(line)
    if "vpae_cnn" in args.cases:
        for line in vpae_cnn_case(ds.train.images, args, mesh):
            report(line)
    again = matmul_reference(2048, mm_repeats)
    report(
        {
            "case": "matmul_recheck",
            **again,
            "drift": again["gflop_s"] / mm["gflop_s"],
            "total_s": time.perf_counter() - t_start,
        }
    )
    return out


if __name__ == "__main__":
    main()
