"""Table 1 (and 2) of the Vanilla Probabilistic Autoencoder (Ciobanu 2021), with our own runs.

Command (full grid; resumable: finished rows are read back from the CSV and skipped):
    python -m experiments.vpae_table --datasets fashion_mnist,mnist
Quick check (a few heads, 1 epoch on 2,048 images; what the test suite runs):
    python -m experiments.vpae_table --quick --out /tmp/vpae_quick

Grid: every valid head x K in {1, 10} x {MLP, CNN (matrix heads only)} x dataset. Paper
settings: 20 epochs, batch 128, Adam (TF defaults: lr 1e-3), pixels / 255 in [0, 1]. Heads that
the paper marks out of memory (K=10 with a full covariance) are listed as rejected with the
memory they would need; mse, maf and vae have no mixture. A run whose loss goes non-finite is
restarted with the next seed (the paper: "if the result is nan, other runs are executed").

Columns: params; s/epoch (median over epochs after the first, which includes compilation; ours
on this machine's CPU, the paper's on a GTX 1060); L2 = mean per-pixel squared error x 100 of the
clipped point reconstruction on the first 1000 test images (the paper's convention); PSNR of that
mean squared error; test NLL in nats per image over the whole test set (the negative ELBO for
the VAE; mse has none). The paper's values stand beside ours. Writes, per dataset,
`vpae_<dataset>.csv` and `vpae_<dataset>.md` under --out, and figures under --out/figures:
input / reconstruction / per-pixel variance for every head (Figures 1-2), each mixture
component with its mixture log-density (Figure 4), and samples (Figure 3: decoded prior codes,
and draws from the distribution given an input).
"""

from __future__ import annotations

import argparse
import csv
import fcntl
import json
import math
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxae import data as jdata
from jaxae import evaluate, metrics, objectives, parallel, plots, train
from jaxae.config import TrainConfig
from jaxae.heads import HEADS, Head
from jaxae.models import ARCHS, VPAE

# The paper's Table 1 (MLP): (head, K) -> (MNIST L2, F-MNIST L2, params, MNIST s/epoch,
# F-MNIST s/epoch). L2 is mean squared error x 100 on 1000 test images.
PAPER_MLP = {
    ("mse", 1): (1.585, 1.451, 50992, 2.563, 3.228),
    ("normal_identity", 1): (1.587, 1.525, 51025, 4.325, 4.331),
    ("normal_diag", 1): (5.299, 4.481, 76897, 4.667, 4.715),
    ("normal_full", 1): (9.808, 16.419, 10205785, 60.116, 61.522),
    ("t_identity", 1): (1.623, 1.61, 51058, 5.83, 7.713),
    ("t_diag", 1): (5.037, 3.26, 76930, 7.655, 7.738),
    ("t_full", 1): (4.303, 3.541, 10205818, 57.132, 57.981),
    ("maf", 1): (1.869, 1.609, 76090, 93.599, 93.015),
    ("matrix_normal_identity", 1): (1.668, 1.526, 51025, 2.601, 2.602),
    ("matrix_normal_diag", 1): (5.685, 4.169, 52873, 3.503, 3.369),
    ("matrix_normal_full", 1): (6.207, 14.303, 77821, 4.824, 4.902),
    ("matrix_t_identity", 1): (1.706, 1.609, 51058, 5.749, 7.227),
    ("matrix_t_diag", 1): (4.571, 3.519, 52906, 6.459, 6.483),
    ("matrix_t_full", 1): (5.61, 6.307, 77854, 7.938, 8.071),
    ("vae", 1): (5.412, 5.608, 101984, 4.394, 4.383),
    ("normal_identity", 10): (1.163, 1.046, 284170, 4.968, 5.382),
    ("normal_diag", 10): (4.575, 2.708, 542890, 10.643, 10.398),
    ("t_identity", 10): (7.671, 15.082, 284500, 51.911, 51.834),
    ("t_diag", 10): (4.975, 16.377, 543220, 56.917, 57.293),
    ("matrix_normal_identity", 10): (1.208, 1.043, 284170, 9.067, 9.067),
    ("matrix_normal_diag", 10): (4.795, 2.331, 302650, 17.817, 17.909),
    ("matrix_normal_full", 10): (5.98, 10.797, 552130, 33.195, 34.137),
    ("matrix_t_identity", 10): (7.953, 16.101, 284500, 53.088, 44.607),
    ("matrix_t_diag", 10): (5.149, 14.122, 302980, 62.859, 62.599),
    ("matrix_t_full", 10): (5.677, 9.389, 552460, 79.59, 78.134),
}
# Table 2 (CNN), same layout (its FID columns are not legible in our copy of the paper).
PAPER_CNN = {
    ("matrix_normal_identity", 1): (8.047, 8.477, 8962, 11.24, 11.287),
    ("matrix_normal_diag", 1): (8.778, 11.444, 8962, 11.881, 11.968),
    ("matrix_normal_full", 1): (9.825, 18.608, 11843, 13.468, 13.481),
    ("matrix_t_identity", 1): (8.074, 8.521, 8962, 12.419, 12.435),
    ("matrix_t_diag", 1): (8.192, 8.67, 8962, 13.013, 13.052),
    ("matrix_t_full", 1): (47.054, 15.92, 11843, 14.601, 14.555),
    ("matrix_normal_identity", 10): (8.498, 10.983, 34891, 16.566, 16.621),
    ("matrix_normal_diag", 10): (9.503, 14.677, 34891, 27.402, 27.167),
    ("matrix_normal_full", 10): (9.907, 18.78, 63701, 43.742, 42.675),
    ("matrix_t_identity", 10): (8.682, 12.052, 34891, 26.821, 26.72),
    ("matrix_t_diag", 10): (11.093, 17.183, 34891, 35.38, 35.742),
    ("matrix_t_full", 10): (17.739, 14.428, 63701, 51.653, 52.031),
}
QUICK_HEADS = ("mse", "normal_identity", "t_diag", "matrix_normal_full", "matrix_t_identity")
FIELDS = [
    "dataset", "arch", "head", "K", "status", "params", "paper_params", "s_per_epoch",
    "paper_s_per_epoch", "L2", "paper_L2", "PSNR_dB", "test_nll_nats", "epochs", "seed",
    "train_examples", "eval_images", "fid_recon", "fid_prior", "fid_gaussian", "fid_images",
]  # fmt: skip


def grid(datasets, archs, heads, ks):
    for dataset in datasets:
        for arch in archs:
            for k in ks:
                for name in heads:
                    if arch == "cnn" and not name.startswith("matrix"):
                        continue
                    if k > 1 and name in ("mse", "maf", "vae"):
                        continue
                    yield dataset, arch, name, k


def paper_row(dataset, arch, name, k):
    table = PAPER_MLP if arch == "mlp" else PAPER_CNN
    if (name, k) not in table:
        return {"paper_params": "", "paper_s_per_epoch": "", "paper_L2": ""}
    l2_m, l2_f, params, s_m, s_f = table[(name, k)]
    mnist = dataset == "mnist"
    return {
        "paper_params": params,
        "paper_s_per_epoch": s_m if mnist else s_f,
        "paper_L2": l2_m if mnist else l2_f,
    }


def run_one(ds, dataset, arch, name, k, args, mesh, figures: Path) -> dict:
    row = {
        "dataset": dataset,
        "arch": arch,
        "head": name,
        "K": k,
        **paper_row(dataset, arch, name, k),
    }
    try:
        head = Head(name, k=k, image_shape=ds.train.images.shape[1:], force=args.force)
    except MemoryError as e:
        return {**row, "status": f"rejected: {str(e).split(';')[0]}"}
    pre = jdata.Preprocess("unit")
    train_images = ds.train.images[: args.train_examples or None]
    eval_images = ds.test.images[: args.eval_images]
    for attempt in range(3):
        seed = args.seed + attempt
        model = VPAE(head, arch, seed=seed)
        graphdef, params = nnx.split(model, nnx.Param)
        n_params = sum(p.size for p in jax.tree.leaves(params))
        config = TrainConfig(
            dataset=dataset, model=arch, head=name, mixture_k=k, epochs=args.epochs,
            batch_size=args.batch_size, learning_rate=1e-3, seed=seed,
        )  # fmt: skip
        workdir = Path(args.runs) / f"{dataset}-{arch}-{name}-k{k}-s{seed}"
        try:
            result = train.fit(
                config, workdir, params=params, loss_fn=objectives.vpae_nll(graphdef),
                train={"image": train_images},
                prepare=lambda b, key: {**b, "image": pre(b["image"], key)},
                mesh=mesh, progress=not args.no_progress, model=model.spec,
            )  # fmt: skip
            break
        except train.NonFiniteLossError as e:
            print(f"  {name} K={k}: {e}; restarting with seed {seed + 1}")
    else:
        return {**row, "status": "non-finite loss in 3 runs", "params": n_params}

    params = parallel.to_host(result.state["params"])
    model = nnx.merge(graphdef, params)
    secs = [line["seconds"] for line in result.history]
    s_per_epoch = float(np.median(secs[1:])) if len(secs) > 1 else float("nan")

    # L2 and PSNR on the first eval images; the NLL on the whole test set.
    recon_fn = jax.jit(lambda x, key: model.reconstruct(x, key))
    x_eval = np.asarray(pre(jnp.asarray(eval_images)))
    recon = np.concatenate(
        [
            np.asarray(recon_fn(x_eval[i : i + 100], jax.random.PRNGKey(i))[0])
            for i in range(0, len(x_eval), 100)
        ]
    )
    mse = float(np.mean((recon - x_eval) ** 2))
    nll = float("nan")
    if name != "mse":
        loss_fn = objectives.vpae_nll(graphdef)
        key = jax.random.PRNGKey(1)

        def nll_fn(p, b):
            return {"nll": loss_fn(p, {"image": pre(b["image"])}, key)["loss"]}

        test = ds.test.images[: args.nll_images or None]
        nll = train.evaluate(nll_fn, result.state["params"], {"image": test}, 100, mesh)["nll"]

    draw_figures(model, x_eval, f"{dataset}-{arch}-{name}-k{k}", figures)

    return {
        **row,
        "status": "ok",
        "params": n_params,
        "s_per_epoch": round(s_per_epoch, 3),
        "L2": round(100 * mse, 3),
        "PSNR_dB": round(10 * math.log10(1 / mse), 2),
        "test_nll_nats": round(nll, 1) if nll == nll else "",
        "epochs": args.epochs,
        "seed": seed,
        "train_examples": len(train_images),
        "eval_images": len(eval_images),
    }


def draw_figures(model: VPAE, x_eval: np.ndarray, tag: str, figures: Path) -> None:
    """The paper's figures of one row, from its model and the test images x_eval (in [0, 1]).

    Figures 1-2 (``<tag>-recon.png``): input / reconstruction / per-pixel variance. Each
    variance image is scaled by its own maximum, written under it; "undefined" where the head
    has no variance (mse; a t head with df <= 2). Figure 4 (``-components.png``, mixtures):
    each component's image and its mixture log-density. Figure 3 (``-samples.png``, MLP):
    decoded N(0, I) codes, and draws from the distribution given an input.
    """
    head, x = model.head, jnp.asarray(x_eval[:8])
    recon, var = map(np.asarray, jax.jit(model.reconstruct)(x, jax.random.PRNGKey(0)))
    var_images, var_caps = variance_panel(var)
    blank = [""] * len(x)
    plots.image_grid(
        [x, recon, var_images], figures / f"{tag}-recon.png", captions=[blank, blank, var_caps]
    )
    if head.k > 1:  # Figure 4: each component's image and its mixture log-density
        comps, logp = jax.jit(model.components)(x[:4])
        rows = [np.concatenate([x_eval[i : i + 1], np.asarray(comps[i])]) for i in range(4)]
        captions = [[""] + [f"{v:.0f}" for v in np.asarray(logp[i])] for i in range(4)]
        plots.image_grid(rows, figures / f"{tag}-components.png", captions=captions)
    if model.arch == "mlp":  # Figure 3: decoded prior codes; draws given an input
        z = jax.random.normal(jax.random.PRNGKey(7), (8, 32))
        rows = [np.asarray(jax.jit(model.decode_code)(z, jax.random.PRNGKey(8))[0])]
        if head.name != "mse":
            draws = model.likelihood(model(x)[0]).sample(seed=jax.random.PRNGKey(9))
            rows.append(np.clip(np.asarray(head.to_image(draws)), 0, 1))
        plots.image_grid(rows, figures / f"{tag}-samples.png")


def variance_panel(var: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """Per-pixel variances [N, H, W, C] -> images scaled by their own maximum, and captions.

    An image with any non-finite variance (none defined: mse, a t head with df <= 2) is drawn
    black and captioned "undefined"; a positive maximum is written as "max 0.043".
    """
    images, captions = [], []
    for v in np.asarray(var, np.float64):
        top = float(np.max(v)) if np.all(np.isfinite(v)) else math.nan
        images.append(v / top if top > 0 else np.zeros_like(v))
        captions.append("undefined" if math.isnan(top) else f"max {top:.2g}")
    return np.stack(images), captions


def redraw(row: dict, ds, args, figures: Path) -> None:
    """`draw_figures` of a finished row, from the newest checkpoint of its run folder."""
    tag = f"{row['dataset']}-{row['arch']}-{row['head']}-k{row['K']}"
    print(f"== redraw {tag}", flush=True)
    model = evaluate.restore(Path(args.runs) / f"{tag}-s{row['seed']}").model
    draw_figures(model, np.asarray(jdata.Preprocess("unit")(ds.test.images[:8])), tag, figures)


def read_rows(out: Path, dataset: str) -> dict:
    """The finished rows of `vpae_<dataset>.csv`, keyed by (dataset, arch, head, K)."""
    path = out / f"vpae_{dataset}.csv"
    if not path.exists():
        return {}
    with open(path, newline="") as f:
        return {(r["dataset"], r["arch"], r["head"], int(r["K"])): r for r in csv.DictReader(f)}


def save_rows(mine: dict, out: Path, dataset: str, args) -> dict:
    """Merge this process's rows into the file's, under a lock, and rewrite the tables.

    Grid processes on different cores (e.g. `--archs mlp` and `--archs cnn`) share one results
    file: each rereads it before writing, so neither drops the other's rows.
    """
    with open(out / f".vpae_{dataset}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        rows = read_rows(out, dataset)
        rows.update({cell: r for cell, r in mine.items() if cell[0] == dataset})
        write_tables(list(rows.values()), out, dataset, args)
    return rows


def table_order(row: dict) -> tuple:
    """The papers' row order: the architecture in `ARCHS` order (MLP before CNN), K, then head."""
    return ARCHS.index(row["arch"]), int(row["K"]), HEADS.index(row["head"])


def write_tables(rows, out: Path, dataset: str, args) -> None:
    rows = sorted((r for r in rows if r["dataset"] == dataset), key=table_order)
    tmp = out / f".vpae_{dataset}.csv.tmp"
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, FIELDS)
        w.writeheader()
        w.writerows(rows)
    tmp.replace(out / f"vpae_{dataset}.csv")
    cols = ["arch", "head", "K", "params", "paper_params", "s_per_epoch", "paper_s_per_epoch",
            "L2", "paper_L2", "PSNR_dB", "test_nll_nats", "fid_recon", "fid_prior",
            "fid_gaussian", "status"]  # fmt: skip
    fid_counts = sorted({int(r["fid_images"]) for r in rows if r.get("fid_images")})
    lines = [
        f"# VPAE Table 1/2 on {dataset}: ours beside the paper's",
        "",
        f"Command: `python -m experiments.vpae_table {args.command_line}`. Ours: {args.epochs} "
        f"epochs, batch {args.batch_size}, Adam 1e-3, {jax.default_backend().upper()} "
        f"({jax.device_count()} device(s)); s/epoch is ours on this machine vs the paper's GTX "
        "1060. L2 = mean squared error x 100 of the clipped reconstruction of the first "
        f"{rows[0]['eval_images'] if rows else '?'} test images; PSNR of that error; test NLL in "
        "nats per image (VAE: negative ELBO). FID (`jaxae.evaluate`) of the reconstructions of "
        "the test images, and of decoded codes drawn from N(0, I) (prior) and from a Gaussian "
        "fitted to the training codes (gaussian); the CNN has no code.",
        "",
        *(
            f"FID protocol: {metrics.protocol_note(n, n, n != metrics.PROTOCOL_N)}"
            for n in fid_counts
        ),
        *([] if fid_counts else [f"FID protocol: {metrics.PROTOCOL} Not run yet: --fid-samples."]),
        "",
        "| " + " | ".join(cols) + " |",
        "|" + "---|" * len(cols),
    ]
    lines += ["| " + " | ".join(str(r.get(c, "")) for c in cols) + " |" for r in rows]
    (out / f"vpae_{dataset}.md").write_text("\n".join(lines) + "\n")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--datasets", default="fashion_mnist,mnist")
    p.add_argument("--archs", default="mlp,cnn")
    p.add_argument("--heads", default=",".join(HEADS))
    p.add_argument("--ks", default="1,10")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--train-examples", type=int, default=0, help="0: the whole training set")
    p.add_argument("--eval-images", type=int, default=1000)
    p.add_argument("--nll-images", type=int, default=0, help="0: the whole test set")
    p.add_argument("--force", action="store_true", help="build heads the paper marks OOM")
    p.add_argument("--out", default="experiments/results")
    p.add_argument("--runs", default="runs/vpae")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--quick", action="store_true", help="a small subset, for CI-sized checks")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument(
        "--redraw", action="store_true",
        help="train nothing: redraw the figures of every finished row from its run's checkpoint",
    )  # fmt: skip
    p.add_argument(
        "--fid-samples", type=int, default=0,
        help="score every finished row of the grid with jaxae.evaluate on this many samples "
        f"({metrics.PROTOCOL_N}: the standard protocol; fewer: marked quick); 0: no FID",
    )  # fmt: skip
    args = p.parse_args(argv)
    args.command_line = " ".join(argv if argv is not None else __import__("sys").argv[1:])
    if args.quick:
        args.datasets, args.archs, args.ks = "fashion_mnist", "mlp", "1,2"
        args.heads = ",".join(QUICK_HEADS)
        args.epochs, args.train_examples, args.eval_images, args.nll_images = 1, 2048, 200, 200
    out = Path(args.out)
    (out / "figures").mkdir(parents=True, exist_ok=True)
    mesh = parallel.data_mesh()

    done = {}
    for dataset in args.datasets.split(","):
        done.update(read_rows(out, dataset))
    rows, mine = dict(done), {}  # mine: the rows this process made, merged into the file
    n_fid = args.fid_samples
    for dataset in args.datasets.split(","):
        ds = jdata.load(dataset, data_dir=args.data_dir)
        ks = [int(k) for k in args.ks.split(",")]
        todo = grid([dataset], args.archs.split(","), args.heads.split(","), ks)
        for cell in todo:
            if cell in done and done[cell]["status"] == "ok":
                if args.redraw:
                    redraw(done[cell], ds, args, out / "figures")
                continue
            if args.redraw:
                continue
            t0 = time.perf_counter()
            print(f"== {' '.join(map(str, cell))}", flush=True)
            row = run_one(ds, *cell, args, mesh, out / "figures")
            rows[cell] = mine[cell] = row
            print(json.dumps(row), f"({time.perf_counter() - t0:.0f} s)", flush=True)
            save_rows(mine, out, dataset, args)
        if args.fid_samples:
            for cell in grid([dataset], args.archs.split(","), args.heads.split(","), ks):
                row = rows.get(cell)
                if row and row["status"] == "ok" and str(row.get("fid_images")) != str(n_fid):
                    rows[cell] = mine[cell] = {**row, **fid_columns(row, args)}
                    save_rows(mine, out, dataset, args)
        if any(cell[0] == dataset for cell in mine):  # else the file stays as it is
            rows.update(save_rows(mine, out, dataset, args))
    return list(rows.values())


def fid_columns(row: dict, args) -> dict:
    """FID of a finished row's reconstructions and samples, by `jaxae.evaluate`."""
    n = args.fid_samples
    name = f"{row['dataset']}-{row['arch']}-{row['head']}-k{row['K']}-s{row['seed']}"
    print(f"== FID of {name} on {n} images", flush=True)
    result = evaluate.evaluate_run(
        Path(args.runs) / name, num_samples=n, quick=n != metrics.PROTOCOL_N,
        data_dir=args.data_dir, progress=not args.no_progress,
    )  # fmt: skip
    samples = result["samples"]
    return {
        "fid_recon": round(result["reconstruction"]["fid"], 2),
        "fid_prior": round(samples["prior"]["fid"], 2) if "prior" in samples else "",
        "fid_gaussian": round(samples["gaussian"]["fid"], 2) if "gaussian" in samples else "",
        "fid_images": n,
    }


if __name__ == "__main__":
    main()
