"""Speed of the FID Inception network (`jaxae.inception`): images/s and a 10k-sample FID's time.

Command:            python -m benchmarks.fid_speed
One core (as the numbers below were taken):  taskset -c 0 python -m benchmarks.fid_speed
Smoke run:          python -m benchmarks.fid_speed --quick

Prints one JSON line per case, all measured in this one process (the machines are shared and
timings vary up to 1.6x between runs: compare ratios within one run, never across runs):

- ``matmul``: this machine's float32 rate, a jitted 2048x2048 ``a @ b`` (best of several calls),
  the reference of every ``ratio_to_matmul``.
- ``inception``: per batch size, the jitted embedding `jaxae.inception.features` runs per call
  (28x28 uint8 images in, resize + network + pool3 out), on all local devices: compile time,
  images/s (best and median call), XLA's FLOP count per image, achieved GFLOP/s.
- ``naive_port``: the same network written the obvious way (each conv unit one
  ``lax.conv_general_dilated`` with the layer's own padding, batch norm unfolded, 1x1 convs as
  convolutions, ``lax.reduce_window`` pools), as a reference for the speed choices of
  `jaxae.inception` (see `_conv`, `FUSED_1X1`, `_window3`); also its max difference.
- ``features_e2e``: `jaxae.inception.features` on ``--e2e-images`` images with the fastest batch
  size: the whole pipeline (host checks, transfers, padding, fetching results).
- ``projection``: seconds for a 10k-sample FID from the end-to-end rate: embedding the
  ``--samples`` generated images (the reference statistics are cached), and with a cold cache
  (also the ``--reference-images`` test images). Generating the samples and the Fréchet
  distance itself (one 2048x2048 matrix square root) are not included. ``target_met``: the
  warm-cache FID within ``TARGET_S`` (15 min) on this machine's cores.
- ``devices``: with 2+ cores, `features` with ``JAX_NUM_CPU_DEVICES=1`` and ``=<cores>``, each in
  a subprocess (XLA fixes the device count at process start).
- ``matmul_recheck``: the matmul rate again at the end, to see whether the load drifted.

Runtime: ~2 min on one core, ``--quick`` ~40 s. Seen on 2026-11-26 with ``taskset -c 0`` (ONE
shared CPU core, 1 device; jax 0.10.2; timings moved by +-30% between runs): matmul 75-135
GFLOP/s; inception 6.8 / 6.1 / 8.4 / 7.8 img/s at batch 4 / 8 / 16 / 32 in one run, 8.5 / 7.9 /
7.5 at 8 / 16 / 32 in another; 11.0 GFLOP per image (XLA's count), so 65-95 GFLOP/s, 0.6-0.9 of
the matmul rate; naive_port 3.8 img/s (1.3-2.2x slower: the padding trick, matmul 1x1s, grouped
1x1s and slice pools); features_e2e 5.4-7.2 img/s; projection 20-30 min for 10k samples on one
core (40-60 min cold). The 15-minute target needs >= 11.1 img/s on the 2 cores: not measured
here (one core only); run without taskset on 2 cores, which also runs the ``devices`` case.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from benchmarks.train_speed import _rounded, _timed_calls, _xla_flops, emit, matmul_reference
from jaxae import inception, parallel

TARGET_S = 15 * 60  # the target: a 10k-sample FID in <= 15 min on 2 CPU cores
_REPO_ROOT = Path(__file__).resolve().parents[1]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--quick", action="store_true", help="one batch size, few repeats")
    p.add_argument("--batch-sizes", default=None, help="comma-separated (default 4,8,16,32)")
    p.add_argument("--repeats", type=int, default=None, help="timed calls per batch size")
    p.add_argument("--e2e-images", type=int, default=None, help="images for features_e2e")
    p.add_argument("--samples", type=int, default=10_000, help="generated images per FID")
    p.add_argument("--reference-images", type=int, default=10_000, help="test images (cold)")
    p.add_argument("--no-naive", action="store_true", help="skip the naive_port reference")
    p.add_argument("--weights", default=None, help="fid_inception_v3.npz (default: lookup)")
    p.add_argument("--devices-child", type=int, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.batch_sizes is None:
        args.batch_sizes = "8" if args.quick else "4,8,16,32"
    args.batch_sizes = [int(b) for b in args.batch_sizes.split(",") if b]
    if args.repeats is None:
        args.repeats = 2 if args.quick else 3
    if args.e2e_images is None:
        args.e2e_images = 16 if args.quick else 64
    return args


def _images(n: int, seed: int = 0) -> np.ndarray:
    """[n, 28, 28, 1] uint8 (speed does not depend on the pixel values)."""
    return np.random.default_rng(seed).integers(0, 256, (n, 28, 28, 1), dtype=np.uint8)


# --- The network per batch size ----------------------------------------------------------------


def time_batch(embed, params, batch_size: int, repeats: int, mesh) -> dict:
    """Compile `embed` for `batch_size` 28x28 images, then time `repeats` calls."""
    batch = parallel.shard_global_batch(_images(batch_size), mesh)
    t0 = time.perf_counter()
    compiled = embed.lower(params, batch).compile()
    jax.block_until_ready(compiled(params, batch))
    compile_s = time.perf_counter() - t0
    times = _timed_calls(lambda: compiled(params, batch), repeats)
    return {
        "batch_size": batch_size,
        "compile_s": compile_s,
        "images_per_s": batch_size / min(times),
        "images_per_s_median": batch_size / statistics.median(times),
        "s_per_call_all": times,
        "gflop_per_image": _xla_flops(compiled) / batch_size / 1e9,
    }


# --- The naive port: the reference of the speed choices -----------------------------------------


def naive_apply(weights, x):
    """The README's table, written the obvious way: [N, 299, 299, 3] -> [N, 2048]."""

    def conv(name, y):
        c = inception.CONVS[name]
        w = jnp.asarray(weights[f"{inception.PREFIX}{name}.weight"]).transpose(2, 3, 1, 0)
        y = lax.conv_general_dilated(
            y,
            w,
            (c.stride,) * 2,
            ((c.ph, c.ph), (c.pw, c.pw)),
            None,
            None,
            ("NHWC", "HWIO", "NHWC"),
        )
        bn = {s: weights[f"{inception.PREFIX}{name}.{s}"] for s in ("mean", "var", "beta")}
        return jax.nn.relu((y - bn["mean"]) / jnp.sqrt(bn["var"] + inception.BN_EPS) + bn["beta"])

    def chain(y, n, *layers):
        for layer in layers:
            y = conv(f"{n}.{layer}", y)
        return y

    def max_pool(y, stride, pad=0):
        pads = ((0, 0), (pad, pad), (pad, pad), (0, 0))
        return lax.reduce_window(y, -jnp.inf, lax.max, (1, 3, 3, 1), (1, stride, stride, 1), pads)

    def avg_pool(y):
        pads, window = ((0, 0), (1, 1), (1, 1), (0, 0)), (1, 3, 3, 1)
        total = lax.reduce_window(y, 0.0, lax.add, window, (1,) * 4, pads)
        count = lax.reduce_window(
            jnp.ones_like(y[:1, :, :, :1]), 0.0, lax.add, window, (1,) * 4, pads
        )
        return total / count

    for name in ("conv", "conv_1", "conv_2"):
        x = conv(name, x)
    x = conv("conv_4", conv("conv_3", max_pool(x, 2)))
    x = max_pool(x, 2)
    for n in ("mixed", "mixed_1", "mixed_2"):
        branches = [
            conv(f"{n}.conv", x),
            chain(x, n, "tower.conv", "tower.conv_1"),
            chain(x, n, "tower_1.conv", "tower_1.conv_1", "tower_1.conv_2"),
            conv(f"{n}.tower_2.conv", avg_pool(x)),
        ]
        x = jnp.concatenate(branches, -1)
    tower = chain(x, "mixed_3", "tower.conv", "tower.conv_1", "tower.conv_2")
    x = jnp.concatenate([conv("mixed_3.conv", x), tower, max_pool(x, 2)], -1)
    for n in ("mixed_4", "mixed_5", "mixed_6", "mixed_7"):
        branches = [
            conv(f"{n}.conv", x),
            chain(x, n, "tower.conv", "tower.conv_1", "tower.conv_2"),
            chain(x, n, *(f"tower_1.conv{s}" for s in ("", "_1", "_2", "_3", "_4"))),
            conv(f"{n}.tower_2.conv", avg_pool(x)),
        ]
        x = jnp.concatenate(branches, -1)
    branches = [
        chain(x, "mixed_8", "tower.conv", "tower.conv_1"),
        chain(x, "mixed_8", *(f"tower_1.conv{s}" for s in ("", "_1", "_2", "_3"))),
        max_pool(x, 2),
    ]
    x = jnp.concatenate(branches, -1)
    for n in ("mixed_9", "mixed_10"):
        t, t1 = conv(f"{n}.tower_conv", x), chain(x, n, "tower_1_conv", "tower_1_conv_1")
        pool = avg_pool(x) if n == "mixed_9" else max_pool(x, 1, 1)
        branches = [
            conv(f"{n}.conv", x),
            conv(f"{n}.tower_mixed_conv", t),
            conv(f"{n}.tower_mixed_conv_1", t),
            conv(f"{n}.tower_1_mixed_conv", t1),
            conv(f"{n}.tower_1_mixed_conv_1", t1),
            conv(f"{n}.tower_2_conv", pool),
        ]
        x = jnp.concatenate(branches, -1)
    return jnp.mean(x, axis=(1, 2))


# --- Cases -------------------------------------------------------------------------------------


def features_rate(n_images: int, batch_size: int | None, weights) -> dict:
    """images/s of `inception.features` on `n_images` (after one warm-up call that compiles)."""
    images = _images(n_images, seed=1)
    warm = batch_size or inception.default_batch_size(parallel.data_mesh())
    t0 = time.perf_counter()
    inception.features(images[:warm], weights=weights, batch_size=batch_size, progress=False)
    warmup_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    inception.features(images, weights=weights, batch_size=batch_size, progress=False)
    seconds = time.perf_counter() - t0
    return {
        "images": n_images,
        "warmup_s": warmup_s,
        "s": seconds,
        "images_per_s": n_images / seconds,
    }


def devices_case(args, batch_per_device: int) -> dict:
    """`features` with 1 device and with one device per core, each in its own process."""
    cores = len(os.sched_getaffinity(0))
    line = {"case": "devices", "cores": cores, "batch_per_device": batch_per_device}
    for n in sorted({1, cores}):
        cmd = [sys.executable, "-m", "benchmarks.fid_speed", "--devices-child", str(n)]
        cmd += ["--batch-sizes", str(batch_per_device * n), "--e2e-images", str(args.e2e_images)]
        cmd += ["--weights", args.weights] if args.weights else []
        env = {**os.environ, "JAX_NUM_CPU_DEVICES": str(n), "JAX_PLATFORMS": "cpu"}
        proc = subprocess.run(cmd, cwd=_REPO_ROOT, env=env, capture_output=True, text=True)
        lines = [x for x in proc.stdout.splitlines() if x.startswith("{")]
        if proc.returncode or not lines:
            line[f"error_{n}"] = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
            continue
        line[f"images_per_s_{n}"] = json.loads(lines[-1])["images_per_s"]
    if f"images_per_s_{cores}" in line and "images_per_s_1" in line and cores > 1:
        line[f"speedup_{cores}_vs_1"] = line[f"images_per_s_{cores}"] / line["images_per_s_1"]
    return line


def main(argv=None) -> list[dict]:
    args = parse_args(argv)
    if args.devices_child is not None:
        if jax.device_count() != args.devices_child:
            raise SystemExit(f"--devices-child {args.devices_child}: {jax.device_count()} devices")
        emit(features_rate(args.e2e_images, args.batch_sizes[0], args.weights))
        return []
    t_start = time.perf_counter()
    out = []

    def report(line):
        line = {
            k: [_rounded(x) for x in v] if isinstance(v, list) else _rounded(v)
            for k, v in line.items()
        }
        out.append(line)
        emit(line)

    mm_repeats = 5 if args.quick else 9
    mm = matmul_reference(2048, mm_repeats)
    cores = len(os.sched_getaffinity(0))
    report(
        {
            "case": "matmul",
            "dtype": "float32",
            **mm,
            "backend": jax.default_backend(),
            "cores": cores,
            "devices": jax.device_count(),
            "jax": jax.__version__,
            "xla_flags": os.environ.get("XLA_FLAGS", ""),
        }
    )

    mesh = parallel.data_mesh()
    weights = inception.load_weights(args.weights)
    params = parallel.replicate(inception.fold_params(weights), mesh)
    embed = parallel.data_parallel(
        lambda p, x: inception.apply(p, inception.preprocess(x)), mesh, donate_argnums=()
    )
    best = None
    for batch_size in args.batch_sizes:
        parallel.check_batch_size(batch_size, mesh)
        r = time_batch(embed, params, batch_size, args.repeats, mesh)
        r["achieved_gflop_s"] = r["gflop_per_image"] * r["images_per_s"]
        r["ratio_to_matmul"] = r["achieved_gflop_s"] / mm["gflop_s"]
        report({"case": "inception", "devices": mesh.devices.size, **r})
        if best is None or r["images_per_s"] > best["images_per_s"]:
            best = r

    if not args.no_naive:
        naive = parallel.data_parallel(
            lambda w, x: naive_apply(w, inception.preprocess(x)), mesh, donate_argnums=()
        )
        raw = parallel.replicate(weights, mesh)
        r = time_batch(naive, raw, best["batch_size"], args.repeats, mesh)
        x = parallel.shard_global_batch(_images(best["batch_size"]), mesh)
        diff = float(jnp.abs(naive(raw, x) - embed(params, x)).max())
        report(
            {
                "case": "naive_port",
                **r,
                "max_abs_diff_to_inception": diff,
                "inception_speedup": best["images_per_s"] / r["images_per_s"],
            }
        )

    e2e = features_rate(args.e2e_images, best["batch_size"], inception.fold_params(weights))
    report({"case": "features_e2e", "batch_size": best["batch_size"], **e2e})
    rate = e2e["images_per_s"]
    warm_s = args.samples / rate
    report(
        {
            "case": "projection",
            "images_per_s": rate,
            "cores": cores,
            "samples": args.samples,
            "warm_cache_s": warm_s,
            "warm_cache_min": warm_s / 60,
            "reference_images": args.reference_images,
            "cold_cache_s": (args.samples + args.reference_images) / rate,
            "cold_cache_min": (args.samples + args.reference_images) / rate / 60,
            "target_s": TARGET_S,
            "target_met": warm_s <= TARGET_S,
            "note": "embedding only; sampling and the matrix square root not included",
        }
    )
    if cores > 1 and jax.default_backend() == "cpu":
        report(devices_case(args, max(1, best["batch_size"] // mesh.devices.size)))

    again = matmul_reference(2048, mm_repeats)
    report(
        {
            "case": "matmul_recheck",
            **again,
            "drift": again["gflop_s"] / mm["gflop_s"],
            "total_s": time.perf_counter() - t_start,
        }
    )
    print(
        f"\n{'batch':>6} {'img/s':>8} {'GFLOP/s':>8} {'x matmul':>9}   ({cores} core(s), "
        f"{mesh.devices.size} device(s), matmul {mm['gflop_s']:.0f} GFLOP/s)"
    )
    for line in out:
        if line["case"] == "inception":
            print(
                f"{line['batch_size']:>6} {line['images_per_s']:>8.2f} "
                f"{line['achieved_gflop_s']:>8.1f} {line['ratio_to_matmul']:>9.2f}"
            )
    print(
        f"10k-sample FID: {warm_s / 60:.1f} min (cached reference statistics), "
        f"{(args.samples + args.reference_images) / rate / 60:.1f} min cold, at {rate:.2f} img/s"
    )
    return out


if __name__ == "__main__":
    main()
