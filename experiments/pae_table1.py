"""The PAE paper's Table 1 (Boehm & Seljak 2020, Sec. 4.1): sample quality at K=32 on
Fashion-MNIST for an AE, a VAE, a beta-VAE and the PAE.

    python -m experiments.pae_table1 --cpu --out experiments/results          # 10,000 images
    python -m experiments.pae_table1 --cpu --quick --out experiments/results  # 1,000, marked

These two write the committed ``experiments/results/pae_table1_cpu{,_quick}.*``; without --out,
tables and PNGs go to ``runs/pae_results``. It resumes only runs it made with its own settings
(`pae_cli.check_owned`: another run stops it, naming the differing fields); ``--no-train``
uses the runs as they are.

Rows, all with the infoGAN networks at K=32 (`experiments/configs/pae*.py`):
- AE: the PAE's first stage alone, sampled by decoding codes drawn from N(0, I) (the paper's
  way to sample an AE);
- VAE (`pae_vae.py:32`) and beta-VAE (`pae_vae.py:32,100,15`, Eq. 15 with beta=100, C=15),
  sampled from their N(0, I) prior;
- PAE: the same autoencoder with its latent flow, sampled by Eq. 6, x = g(b^-1(u)).
Columns: sample FID and reconstruction FID (`jaxae.evaluate`'s protocol: Inception features of
the generated images against those of the test images), and the reconstruction error on the
test set, pixels in [0, 1]. The paper's "mean reconstruction error on the test data (averaged
over all pixels)" is 0.077 for its AE: a per-pixel MSE of its AE would be far smaller (its
Figure 2 reconstructions are sharp), so we read it as the mean absolute error per pixel, and
print the MSE and its root beside it. `--cpu` trains 3 epochs instead of 500 (the flow: up to
100 epochs, early-stopped): the numbers are of those models. Each set of Inception features is
cached in ``<runs>/table1/``, so a rerun computes only what is missing.
"""

from __future__ import annotations

import hashlib
import json

import jax
import numpy as np

from experiments import pae_cli
from experiments.configs import pae as pae_config
from experiments.configs import pae_vae
from jaxae import evaluate, inception, metrics, parallel, plots

PAPER = {  # Table 1: sample FID, reconstruction FID, mean reconstruction error
    "AE": (102.9, 31.5, 0.077),
    "VAE": (102.4, None, 0.084),
    "beta-VAE": (56.3, None, 0.114),
    "PAE": (35.4, 31.5, 0.077),
}


def configs(cpu: bool) -> dict:
    def scaled(c):
        if cpu:
            c.training.epochs, c.training.keep_checkpoints = 3, 1
        return c

    return {
        "k32": pae_config.get_config("32,cpu" if cpu else "32"),
        "vae_k32": scaled(pae_vae.get_config("32")),
        "bvae_k32": scaled(pae_vae.get_config("32,100,15")),
    }


ROWS = (  # row -> (run folder, stage, sampler)
    ("AE", "k32", 1, "prior"),
    ("VAE", "vae_k32", None, "prior"),
    ("beta-VAE", "bvae_k32", None, "prior"),
    ("PAE", "k32", None, "flow"),
)


def make_parser():
    """The command line (`pae_cli.parser` and --quick)."""
    p = pae_cli.parser(__doc__, "runs/pae", module="experiments.pae_table1")
    p.add_argument("--quick", action="store_true", help="1,000 images instead of 10,000")
    return p


def main(argv=None) -> dict:
    args = pae_cli.parse(make_parser(), argv)
    n = evaluate.QUICK_COUNT if args.quick else evaluate.STANDARD_COUNT
    runs, out, log = pae_cli.start(args)
    cache = runs / "table1"
    cache.mkdir(parents=True, exist_ok=True)

    pae_cli.train(configs(args.cpu), runs, args, log)  # only runs it owns (pae_cli.check_owned)

    mesh = parallel.data_mesh()
    test = evaluate.reference_images("fashion_mnist", "test", n, data_dir=args.data_dir)
    x = test.astype(np.float32) / 255.0
    ref = evaluate.reference_features("fashion_mnist", "test", n, data_dir=args.data_dir,
                                      mesh=mesh, progress=False)  # fmt: skip

    def features(tag: str, images):
        # keyed by the images themselves: the AE's and the PAE's reconstructions are one set
        digest = hashlib.sha256(np.ascontiguousarray(images).tobytes()).hexdigest()[:16]
        path = cache / f"{digest}-{n}.npy"
        if path.exists():
            return np.load(path, allow_pickle=False)
        log(f"embed {tag}: {len(images)} images")
        f = inception.features(images, mesh=mesh, progress=False)
        np.save(path, f)
        return f

    rows, grids = {}, []
    for row, run, stage, sampler in ROWS:
        restored = pae_cli.restore(runs / run, stage=stage)
        fns = evaluate.functions(restored)
        recon = evaluate._batched(fns.reconstruct, x, mesh=mesh)
        key = jax.random.PRNGKey(args.seed)
        if sampler == "flow":
            codes = np.asarray(restored.model.sample_codes(key, n))
        else:
            codes = np.asarray(jax.random.normal(key, (n, fns.latent_dim)))
        samples = evaluate._batched(fns.decode, codes, mesh=mesh)
        fid_s = metrics.fid(features(f"{row} samples", samples), ref, quick=args.quick)
        fid_r = metrics.fid(features(f"{row} reconstructions", recon), ref, quick=args.quick)
        err = recon - x
        rows[row] = {
            "run": str(runs / run), "step": restored.step, "sampler": sampler,
            "sample_fid": fid_s, "recon_fid": fid_r,
            "mae": float(np.mean(np.abs(err))), "mse": float(np.mean(err**2)),
            "rmse": float(np.sqrt(np.mean(err**2))), "paper": PAPER[row],
        }  # fmt: skip
        log(f"{row}: {rows[row]}")
        grids.append(samples[:10])
    grids.append(recon[:10])

    tag = ("cpu" if args.cpu else "paper") + ("_quick" if args.quick else "")
    lines = [
        f"# PAE Table 1: sample quality at K=32 on Fashion-MNIST ({tag})",
        "",
        f"Command: `{args.command}`",
        "",
        f"Protocol: {metrics.protocol_note(n, n, args.quick)}",
        "",
        "| model | sample FID | paper | reconstruction FID | paper | MAE | paper | MSE | RMSE |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row, r in rows.items():
        ps, pr, pe = (("" if v is None else v) for v in r["paper"])
        lines.append(
            f"| {row} ({r['sampler']}) | {r['sample_fid']:.1f} | {ps} | {r['recon_fid']:.1f} | "
            f"{pr} | {r['mae']:.4f} | {pe} | {r['mse']:.4f} | {r['rmse']:.4f} |"
        )
    lines += ["", f"Samples (rows: {', '.join(rows)}; last row: test reconstructions of the AE "
              f"and PAE): `pae_table1_{tag}.png`.", ""]  # fmt: skip
    (out / f"pae_table1_{tag}.md").write_text("\n".join(lines))
    (out / f"pae_table1_{tag}.json").write_text(json.dumps(rows, indent=1))
    plots.image_grid(grids, out / f"pae_table1_{tag}.png",
                     row_labels=[f"{r}, {'N(0, I)' if s == 'prior' else s} samples"
                                 for r, _, _, s in ROWS]
                     + ["AE = PAE\ntest reconstructions"],
                     title="K=32 on Fashion-MNIST: samples per model")  # fmt: skip
    print("\n".join(lines))
    return rows


if __name__ == "__main__":
    main()
