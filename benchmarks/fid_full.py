"""The cost of one full 10,000-image FID on this machine, measured end to end.

Command (as measured for the README, 2 CPU cores, 2026-11-26):
    JAX_NUM_CPU_DEVICES=2 JAXAE_CACHE_DIR=$(mktemp -d) python -m benchmarks.fid_full

It embeds the 10,000 Fashion-MNIST test images through `jaxae.evaluate.reference_features` (an
empty cache, so they are really embedded: exactly the work a warm-cache FID does on a model's
10,000 samples), then times the Fréchet distance, KID and precision/recall between the two
halves of the set. Prints one JSON line. Result here: embedding 736.7 s (13.6 images/s), FID
3.7 s, so 12.3 min for a 10k FID (the issue's target: 15 min on 2 CPU cores).
"""

from __future__ import annotations

import json
import time

import jax

from jaxae import evaluate, metrics


def main() -> dict:
    t0 = time.perf_counter()
    feats = evaluate.reference_features("fashion_mnist", "test", 10_000, progress=True)
    t1 = time.perf_counter()
    a, b = feats[:5000], feats[5000:]
    fid = metrics.fid(a, b)
    t2 = time.perf_counter()
    kid = metrics.kid(a, b)
    t3 = time.perf_counter()
    precision_recall = metrics.precision_recall(a, b)
    t4 = time.perf_counter()
    line = {
        "devices": jax.device_count(),
        "embed_10k_s": round(t1 - t0, 1),
        "images_per_s": round(10_000 / (t1 - t0), 2),
        "fid_s": round(t2 - t1, 1),
        "fid_test_half_vs_half": round(fid, 3),
        "kid_s": round(t3 - t2, 1),
        "kid": kid,
        "pr_5k_s": round(t4 - t3, 1),
        "precision_recall": precision_recall,
        "fid_10k_warm_cache_min": round((t1 - t0 + t2 - t1) / 60, 2),
    }
    print(json.dumps(line))
    return line


if __name__ == "__main__":
    main()
