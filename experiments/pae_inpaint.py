"""The PAE paper's inpainting and denoising (Boehm & Seljak 2020, Sec. 2.3 and 4.2, Figure 6):
posterior analysis of corrupted MNIST digits in the flow's latent space (`jaxae.inpaint`).

    python -m experiments.pae_inpaint --cpu --out experiments/results   # ~30 min on 2 cores
    python -m experiments.pae_inpaint            # 1,000 images, 10 starts, 100 L-BFGS steps

The first command writes the committed ``experiments/results/pae_inpaint_cpu*``; without --out,
tables and PNGs go to ``runs/pae_results``. It resumes only runs it made with its own settings
(`pae_cli.check_owned`: another run stops it, naming the differing fields); ``--no-train``
uses the runs as they are.

For each K (the paper's K=8 and a larger one, 32) it trains (or resumes) the PAE on MNIST in
``<runs>/k<K>`` (`experiments/configs/pae.py`, dataset MNIST), then for each corruption of
`inpaint.CORRUPTIONS` on the first test images:
- MSE on the hidden pixels (for pure noise: on every pixel) of the MAP image, of the posterior
  mean and of the baseline decode(encode(x~)) (hidden pixels set to black for the encoder);
- calibration: the fraction of the true pixels inside the central 68% and 95% per-pixel
  intervals of the posterior predictive, G(u) + sigma * eps with u from the Laplace mixture
  (sigma: the noise map of Eq. 8, the model's own error on clean images), for the mixture and,
  on the first few images at the first K (1 with --cpu, 10 without), for NUTS samples
  (`inpaint.nuts`) and for the mixture on those same images;
- the number of distinct modes per image, and the fraction of starts whose MAP converged.
A Figure-6-like PNG per K: for the first image of each corruption, the input (hidden pixels
grey), the MAP, the truth, five posterior samples, those samples through the mask, and the
per-pixel posterior std; and a 2-D histogram of two latent variables (u_0, u_1) of the first
image's posterior samples (Laplace mixture, then NUTS).
"""

from __future__ import annotations

import json
import time

import jax
import jax.numpy as jnp
import numpy as np

from experiments import pae_cli
from experiments.configs import pae as pae_config
from jaxae import data as jdata
from jaxae import inpaint, pae, plots


class Profile:
    def __init__(self, cpu: bool):
        self.name = "cpu" if cpu else "paper"
        self.ks = (8, 32)
        self.n = 100 if cpu else 1000
        self.starts = 4 if cpu else 10
        self.steps = 60 if cpu else 100
        self.samples = 100
        # NUTS takes 2-5 min per image on 2 cores (500 + 1,000 steps, up to 2^10 leapfrogs)
        self.nuts_n = 1 if cpu else 10
        self.nuts_warmup, self.nuts_samples = (300, 500) if cpu else (500, 1000)
        self.batch = 50

    def config(self, k: int):
        c = pae_config.get_config(f"{k},cpu" if self.name == "cpu" else str(k))
        c.data.dataset = "mnist"
        return c


def _mse(images, truth, judged) -> float:
    return float(np.mean(((images - truth) ** 2)[:, judged]))


def _intervals(truth, draws, sigma, key):
    """Fractions of true pixels inside the 68% and 95% intervals of G(u) + sigma eps."""
    pred = draws + sigma * np.asarray(jax.random.normal(key, draws.shape))
    out = {}
    for level in (68, 95):
        lo, hi = np.percentile(pred, [50 - level / 2, 50 + level / 2], axis=1)
        out[level] = (truth >= lo) & (truth <= hi)
    return out


def make_parser():
    """The command line (`pae_cli.parser` and --ks)."""
    p = pae_cli.parser(__doc__, "runs/pae_mnist", module="experiments.pae_inpaint")
    p.add_argument("--ks", default=None, help="comma-separated latent dims (default 8,32)")
    return p


def main(argv=None) -> dict:
    args = pae_cli.parse(make_parser(), argv)
    prof = Profile(args.cpu)
    prof.ks = pae_cli.ks(args.ks, prof.ks)
    runs, out, log = pae_cli.start(args)

    test = jdata.load_raw("mnist", "test", args.data_dir).images[: prof.n]
    rows, tag = [], f"pae_inpaint_{prof.name}"
    pae_cli.train({f"k{k}": prof.config(k) for k in prof.ks}, runs, args, log)  # the runs it owns
    for ki, k in enumerate(prof.ks):
        restored = pae_cli.restore(runs / f"k{k}")
        model = restored.model
        scale, shape = restored.config.data.scale, tuple(model.image_shape)
        offset = jdata.Preprocess(scale).offset
        x = test.astype(np.float32) / 255.0
        generate, sigma = pae.generator(model)
        sigma_img = np.asarray(sigma).reshape(shape)
        figure, hist = [], []
        for ci, name in enumerate(inpaint.CORRUPTIONS):
            c = inpaint.corruption(name, shape, seed=args.seed)
            key = jax.random.PRNGKey(args.seed * 100 + ci)
            x_t = np.asarray(inpaint.corrupt(jnp.asarray(x), c, key))
            t1 = time.perf_counter()
            parts = []
            for i in range(0, len(x), prof.batch):
                parts.append(inpaint.pae_posterior(
                    model, x_t[i : i + prof.batch], c, scale=scale, starts=prof.starts,
                    steps=prof.steps, num_samples=prof.samples,
                    key=jax.random.fold_in(key, i),
                ))  # fmt: skip
            seconds = time.perf_counter() - t1
            map_img, mean, samples, std, modes = (
                np.concatenate([getattr(r, f) for r in parts])
                for f in ("map_image", "mean", "samples", "std", "num_modes")
            )
            converged = np.concatenate([r.post["converged"] for r in parts])
            x_in = np.where(c.mask, x_t, 0.0) - offset
            base = np.clip(np.asarray(model.reconstruct(jnp.asarray(x_in))[0]) + offset, 0, 1)
            judged = ~c.mask if (~c.mask).any() else np.ones(shape, bool)
            inside = _intervals(x, samples, sigma_img, jax.random.PRNGKey(1))
            row = {
                "k": k, "corruption": name, "images": len(x), "starts": prof.starts,
                "map_steps": prof.steps, "mse_map": _mse(map_img, x, judged),
                "mse_mean": _mse(mean, x, judged), "mse_baseline": _mse(base, x, judged),
                "cover68": float(np.mean(inside[68][:, judged])),
                "cover95": float(np.mean(inside[95][:, judged])),
                "modes_mean": float(modes.mean()), "converged": float(converged.mean()),
                "seconds": seconds,
            }  # fmt: skip
            if ki == 0 and prof.nuts_n:
                nuts_in, mix_in = {68: [], 95: []}, {68: [], 95: []}
                gaps = []
                for j in range(prof.nuts_n):
                    best = parts[0].post["u"][j][np.argmin(parts[0].post["objective"][j])]
                    ref = inpaint.nuts(
                        generate, sigma, jnp.asarray(x_in[j].reshape(-1)), c.mask.reshape(-1),
                        c.noise.reshape(-1), best, jax.random.PRNGKey(j),
                        num_warmup=prof.nuts_warmup, num_samples=prof.nuts_samples,
                    )  # fmt: skip
                    draws = inpaint.decode_codes(generate, ref["u"])
                    draws = np.clip(draws + offset, 0, 1).reshape(-1, *shape)
                    ins = _intervals(x[j : j + 1], draws[None], sigma_img, jax.random.PRNGKey(2))
                    for level in (68, 95):
                        nuts_in[level].append(ins[level][0][judged])
                        mix_in[level].append(inside[level][j][judged])
                    gaps.append(float(np.mean(np.abs(draws.mean(0) - mean[j])[judged])))
                    if j == 0 and ci == 0:
                        hist.append(ref["u"][:, :2])
                row["nuts_images"] = prof.nuts_n
                row["nuts_cover68"] = float(np.mean(nuts_in[68]))
                row["nuts_cover95"] = float(np.mean(nuts_in[95]))
                # the mixture on the same images, so the two coverages compare like for like
                row["mix_on_nuts_cover68"] = float(np.mean(mix_in[68]))
                row["mix_on_nuts_cover95"] = float(np.mean(mix_in[95]))
                row["nuts_mean_abs_gap"] = float(np.mean(gaps))
            rows.append(row)
            log(json.dumps(row))
            grey = np.where(c.mask, x_t[0], 0.5)
            figure.append([grey, map_img[0], x[0], *samples[0, :5],
                           *np.where(c.mask, samples[0, :5], 0.5),
                           std[0] / max(float(std[0].max()), 1e-6)])  # fmt: skip
            if ci == 0:
                u_mix = inpaint.sample(parts[0].post, jax.random.PRNGKey(3), 2000)[0, :, :2]
                hist.insert(0, np.asarray(u_mix))
        plots.image_grid(
            figure, out / f"{tag}_k{k}.png", row_labels=list(inpaint.CORRUPTIONS),
            col_labels=["input", "MAP", "truth", "sample 1", "2", "3", "4", "5",
                        "masked 1", "2", "3", "4", "5", "std"],
            title=f"K={k}, first test image: hidden pixels grey; masked = the samples on the "
            "observed pixels; std scaled to its maximum",
        )  # fmt: skip
        if hist:
            lim = max(float(np.abs(h).max()) for h in hist)
            images = []
            for h in hist:
                counts = np.histogram2d(h[:, 0], h[:, 1], bins=28, range=[[-lim, lim]] * 2)[0]
                images.append(counts / counts.max())
            plots.image_grid(
                [images], out / f"{tag}_k{k}_marginal.png", scale=4,
                col_labels=["Laplace mixture", "NUTS"][: len(images)],
                title=f"2-D histogram of (u_0, u_1), {inpaint.CORRUPTIONS[0]}",
            )  # fmt: skip

    cols = ["k", "corruption", "mse_map", "mse_mean", "mse_baseline", "cover68", "cover95",
            "modes_mean", "converged", "nuts_cover68", "nuts_cover95", "mix_on_nuts_cover68",
            "mix_on_nuts_cover95", "nuts_mean_abs_gap",
            "seconds"]  # fmt: skip
    lines = [
        f"# PAE inpainting and denoising on MNIST ({prof.name} configuration)",
        "",
        f"Command: `{args.command}`",
        "",
        f"First {prof.n} test images, {prof.starts} starts per image, {prof.steps} L-BFGS steps, "
        f"{prof.samples} posterior samples; NUTS ({prof.nuts_warmup} warm-up steps, "
        f"{prof.nuts_samples} draws) on the first {prof.nuts_n} images at K={prof.ks[0]}. "
        "MSE on the hidden pixels (noise05: all pixels), pixels in [0, 1].",
        "",
        "| " + " | ".join(cols) + " |",
        "|" + "---|" * len(cols),
    ]
    for r in rows:
        cells = [f"{r[c]:.4g}" if isinstance(r.get(c), float) else str(r.get(c, "")) for c in cols]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", f"Figures: `{tag}_k<K>.png`, `{tag}_k<K>_marginal.png`.", ""]
    (out / f"{tag}.md").write_text("\n".join(lines))
    (out / f"{tag}.json").write_text(json.dumps(rows, indent=1))
    print("\n".join(lines))
    return {"rows": rows}


if __name__ == "__main__":
    main()
