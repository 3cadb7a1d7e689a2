"""Table 1 (and 2) of the Vanilla Probabilistic Autoencoder (Ciobanu 2021), with our own runs.

Command (full grid; resumable: finished rows are read back from the CSV and skipped):
    python -m experiments.vpae_table --datasets fashion_mnist,mnist
writes under runs/vpae_table; the committed tables are made with `--out experiments/results`.
Quick check (a few heads, 1 epoch on 2,048 images; written under runs/vpae_table_quick unless
--out says otherwise):
    python -m experiments.vpae_table --quick --out /tmp/vpae_quick

Grid: every valid head x K in {1, 10} x {MLP, CNN (matrix heads only)} x dataset. Paper
settings: 20 epochs, batch 128, Adam (TF defaults: lr 1e-3), pixels / 255 in [0, 1], the whole
training set, L2 on the first 1000 test images and the NLL on the whole test set. Each row is
trained through the same config as `experiments/train.py` (`experiments/configs/vpae.py`).
Heads that the paper marks out of memory (K=10 with a full covariance) are listed as rejected
with the memory they would need; mse, maf and vae have no mixture. A run whose loss goes
non-finite is restarted with the next seed (the paper: "if the result is nan, other runs are
executed"), at most 3 runs.

A row is identified by every setting that changes it: dataset, arch, head, K, epochs, batch
size, the seed asked for (`first_seed`; `seed` is the seed of the run that finished), training
examples, eval images and NLL images. A row already in the CSV is skipped only if all of them
match; rows written before the batch_size / nll_images / first_seed columns existed are read as
batch 128, the whole test set, and a first seed up to 2 below their seed. Run folders under
--runs are `{dataset}-{arch}-{head}-k{K}-s{seed}` at the paper's training settings, with
`-e{epochs}`, `-b{batch}` and `-n{examples}` appended for each one that differs (figures
likewise), so runs of different settings never resume each other's checkpoints.

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
import statistics
import sys
import time
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from experiments.configs import vpae as vpae_config
from jaxae import data as jdata
from jaxae import evaluate, metrics, models, nets, objectives, parallel, plots, train
from jaxae.heads import HEADS

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
    "batch_size", "nll_images", "first_seed",
]  # fmt: skip
LEARNING_RATE = 1e-3
ATTEMPTS = 3  # runs (seeds) tried before a row is given up as non-finite
EVAL_BATCH = 100
# The paper's settings; the training set and the NLL's test set are whole at the paper's.
PAPER_EPOCHS, PAPER_BATCH, PAPER_EVAL_IMAGES = 20, 128, 1000
# What identifies a row besides (dataset, arch, head, K), in key order.
SETTINGS = ("epochs", "batch_size", "first_seed", "train_examples", "eval_images", "nll_images")
DEFAULT_OUT, QUICK_OUT = "runs/vpae_table", "runs/vpae_table_quick"


class Sizes(NamedTuple):
    """How many training and test images a dataset has (what "the whole set" means)."""

    train: int
    test: int

    @classmethod
    def of(cls, ds) -> Sizes:
        return cls(len(ds.train.images), len(ds.test.images))


def requested(args, sizes: Sizes) -> dict:
    """The settings of this invocation, as effective counts ({name: int} over `SETTINGS`)."""
    return {
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "first_seed": args.seed,
        "train_examples": min(args.train_examples or sizes.train, sizes.train),
        "eval_images": min(args.eval_images, sizes.test),
        "nll_images": min(args.nll_images or sizes.test, sizes.test),
    }


def row_settings(row: dict, sizes: Sizes, seed: int | None = None) -> dict:
    """The settings a CSV row was made with; blanks (rows written before a column existed, or
    failed rows of earlier releases) are the paper's settings.

    Without `first_seed`, the row's `seed` is that of the run that finished, which restarted from
    up to ``ATTEMPTS - 1`` seeds below: it is read as made for `seed` (this invocation's
    --seed) if `seed` lies in that range, else as made for its own seed.
    """

    def get(name, default):
        value = row.get(name)
        return default if value in (None, "") else int(value)

    ran = get("seed", None)
    first = get("first_seed", None)
    if first is None:
        first = ran if ran is not None else seed
        if seed is not None and ran is not None and seed <= ran < seed + ATTEMPTS:
            first = seed
    return {
        "epochs": get("epochs", PAPER_EPOCHS),
        "batch_size": get("batch_size", PAPER_BATCH),
        "first_seed": 0 if first is None else first,
        "train_examples": get("train_examples", sizes.train),
        "eval_images": get("eval_images", min(PAPER_EVAL_IMAGES, sizes.test)),
        "nll_images": get("nll_images", sizes.test),
    }


def cell_key(dataset: str, arch: str, head: str, k, settings: dict) -> tuple:
    """The identity of a row: its cell of the grid and every setting that changes its result."""
    return (dataset, arch, head, int(k), *(int(settings[s]) for s in SETTINGS))


def row_key(row: dict, sizes: Sizes, seed: int | None = None) -> tuple:
    return cell_key(
        row["dataset"], row["arch"], row["head"], row["K"], row_settings(row, sizes, seed)
    )


def suffix(settings: dict, sizes: Sizes) -> str:
    """``-e{epochs}-b{batch}-n{examples}``, each part only where it differs from the paper's
    training settings ('' at the paper's): what tells run folders and figures apart."""
    parts = []
    if int(settings["epochs"]) != PAPER_EPOCHS:
        parts.append(f"e{settings['epochs']}")
    if int(settings["batch_size"]) != PAPER_BATCH:
        parts.append(f"b{settings['batch_size']}")
    if int(settings["train_examples"]) != sizes.train:
        parts.append(f"n{settings['train_examples']}")
    return "".join(f"-{p}" for p in parts)


def run_name(dataset, arch, head, k, seed, settings: dict, sizes: Sizes) -> str:
    """The run folder of one training run under --runs: ``{dataset}-{arch}-{head}-k{K}-s{seed}``
    at the paper's training settings (the folders of earlier releases), plus `suffix`."""
    return f"{dataset}-{arch}-{head}-k{k}-s{seed}{suffix(settings, sizes)}"


def figure_tag(dataset, arch, head, k, settings: dict, sizes: Sizes) -> str:
    """The figures' name prefix: the cell, plus `suffix` and ``-seed{N}`` for a first seed != 0."""
    first = int(settings["first_seed"])
    seed = f"-seed{first}" if first else ""
    return f"{dataset}-{arch}-{head}-k{k}{suffix(settings, sizes)}{seed}"


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


def row_config(dataset: str, arch: str, name: str, k: int, settings: dict, seed: int):
    """The row's `jaxae.config`: `experiments/configs/vpae.py` (what `experiments/train.py`
    trains with ``--config experiments/configs/vpae.py:HEAD,K,ARCH``) with the row's settings."""
    config = vpae_config.get_config(f"{name},{k},{arch}")
    config.data.dataset = dataset
    config.optimizer.learning_rate = LEARNING_RATE
    config.training.epochs = int(settings["epochs"])
    config.training.batch_size = int(settings["batch_size"])
    config.training.seed = seed
    return config


def seconds_per_epoch(workdir: Path) -> float:
    """Median seconds per epoch over the run's log (`metrics.jsonl`), after the first epoch
    (which includes compilation); read from the log so that a resumed or finished run counts
    the epochs trained before too."""
    log = workdir / "metrics.jsonl"
    per_epoch: dict[int, float] = {}
    if log.exists():
        for text in log.read_text().splitlines():
            if text.strip():
                line = json.loads(text)
                epoch = math.ceil(line["epoch"] - 1e-9)
                per_epoch[epoch] = per_epoch.get(epoch, 0.0) + line["seconds"]
    secs = [per_epoch[e] for e in sorted(per_epoch)]
    return float(statistics.median(secs[1:])) if len(secs) > 1 else float("nan")


def eval_batch(mesh) -> int:
    """`EVAL_BATCH`, rounded up to a multiple of the device count."""
    n = mesh.devices.size
    return -(-EVAL_BATCH // n) * n


def run_one(ds, dataset, arch, name, k, settings, sizes, args, mesh, figures: Path) -> dict:
    row = {
        "dataset": dataset,
        "arch": arch,
        "head": name,
        "K": k,
        **paper_row(dataset, arch, name, k),
        **settings,
    }
    pre = jdata.Preprocess("unit")
    image_shape = ds.train.images.shape[1:]
    train_images = ds.train.images[: settings["train_examples"]]
    eval_images = ds.test.images[: settings["eval_images"]]

    def prepare(batch, key):
        return {**batch, "image": pre(batch["image"], key)}

    for attempt in range(ATTEMPTS):
        seed = settings["first_seed"] + attempt
        spec = {**models.vpae_spec(name, k, arch, image_shape), "seed": seed}
        try:
            model = models.build(spec, force=args.force)
        except MemoryError as e:
            return {**row, "status": f"rejected: {str(e).split(';')[0]}"}
        graphdef, params, model_state = objectives.split(model, train=True)
        eval_graphdef = objectives.split(model, train=False)[0]
        n_params = models.num_params(model)
        config = row_config(dataset, arch, name, k, settings, seed)
        update = train.single(objectives.loss_fn(graphdef), optax.adam(LEARNING_RATE))
        workdir = Path(args.runs) / run_name(dataset, arch, name, k, seed, settings, sizes)
        try:
            result = train.fit(
                config, workdir, params=params, model_state=model_state, update=update,
                train={"image": train_images}, prepare=prepare, mesh=mesh,
                progress=not args.no_progress, model=model.spec, data_files=ds.files,
            )  # fmt: skip
            break
        except train.NonFiniteLossError as e:
            print(f"  {name} K={k}: {e}; restarting with seed {seed + 1}")
    else:
        return {**row, "status": f"non-finite loss in {ATTEMPTS} runs", "params": n_params}

    state = result.state
    model = objectives.merge(
        eval_graphdef, parallel.to_host(state["params"]), parallel.to_host(state["model_state"])
    )

    # L2 and PSNR on the first eval images; the NLL on the whole test set.
    x_eval = np.asarray(pre(jnp.asarray(eval_images)))

    def recon_fn(batch):  # the MAF's sampled point: the key of batch i is PRNGKey(its start)
        return model.reconstruct(batch["image"], jax.random.PRNGKey(batch["start"][0]))[0]

    step = parallel.data_parallel(recon_fn, mesh, batch_argnums=(0,), donate_argnums=())
    b = eval_batch(mesh)
    batches = {"image": x_eval, "start": np.arange(len(x_eval)) // b * b}
    recon = parallel.map_batches(step, batches, b, mesh=mesh)
    mse = float(np.mean((recon - x_eval) ** 2))
    nll = float("nan")
    if model.has_density:
        loss_fn = objectives.loss_fn(eval_graphdef)
        key = jax.random.PRNGKey(1)

        def nll_terms(params, model_state, batch):
            image = pre(batch["image"])
            return {"nll": loss_fn(params, model_state, {"image": image}, key)[0]["loss"]}

        step = parallel.data_parallel(nll_terms, mesh, batch_argnums=(2,), donate_argnums=())
        test = {"image": ds.test.images[: settings["nll_images"]]}
        args_ = (state["params"], state["model_state"])
        nll = parallel.batch_means(step, test, eval_batch(mesh), args=args_, mesh=mesh)["nll"]

    tag = figure_tag(dataset, arch, name, k, settings, sizes)
    draw_figures(model, x_eval, tag, figures)

    return {
        **row,
        "status": "ok",
        "params": n_params,
        "s_per_epoch": round(seconds_per_epoch(workdir), 3),
        "L2": round(100 * mse, 3),
        "PSNR_dB": round(10 * math.log10(1 / mse), 2),
        "test_nll_nats": round(nll, 1) if nll == nll else "",
        "seed": seed,
    }


def draw_figures(model, x_eval: np.ndarray, tag: str, figures: Path) -> None:
    """The paper's figures of one row, from its model and the test images x_eval (in [0, 1]).

    Figures 1-2 (``<tag>-recon.png``): input / reconstruction / per-pixel variance. Each
    variance image is scaled by its own maximum, written under it; "undefined" where the head
    has no variance (mse; a t head with df <= 2). Figure 4 (``-components.png``, mixtures):
    each component's image and its mixture log-density. Figure 3 (``-samples.png``, MLP):
    decoded N(0, I) codes, and draws from the distribution given an input (none for mse, whose
    'distribution' is a point).
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
    if model.spec.get("arch", "mlp") == "mlp":  # Figure 3: decoded prior codes; draws given x
        z = jax.random.normal(jax.random.PRNGKey(7), (8, model.latent_dim))
        rows = [np.asarray(jax.jit(model.decode_code)(z, jax.random.PRNGKey(8))[0])]
        dist = model.likelihood(model.decode(model.encode(x)))
        if getattr(dist, "is_density", True):
            draws = dist.sample(seed=jax.random.PRNGKey(9))
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


def row_run(row: dict, sizes: Sizes, args) -> Path:
    """The run folder of a finished row (its `seed` is the run that finished)."""
    settings = row_settings(row, sizes, args.seed)
    name = run_name(row["dataset"], row["arch"], row["head"], row["K"], row["seed"], settings,
                    sizes)  # fmt: skip
    return Path(args.runs) / name


def redraw(row: dict, ds, sizes: Sizes, args, figures: Path) -> None:
    """`draw_figures` of a finished row, from the newest checkpoint of its run folder."""
    settings = row_settings(row, sizes, args.seed)
    tag = figure_tag(row["dataset"], row["arch"], row["head"], row["K"], settings, sizes)
    print(f"== redraw {tag}", flush=True)
    model = evaluate.restore(row_run(row, sizes, args)).model
    draw_figures(model, np.asarray(jdata.Preprocess("unit")(ds.test.images[:8])), tag, figures)


def read_rows(out: Path, dataset: str, sizes: Sizes, seed: int | None = None) -> dict:
    """The rows of `vpae_<dataset>.csv`, keyed by `row_key` (`seed`: this invocation's --seed,
    to read rows written before the `first_seed` column, see `row_settings`)."""
    path = out / f"vpae_{dataset}.csv"
    if not path.exists():
        return {}
    with open(path, newline="") as f:
        return {row_key(r, sizes, seed): r for r in csv.DictReader(f)}


def save_rows(mine: dict, out: Path, dataset: str, sizes: Sizes, args) -> dict:
    """Merge this process's rows into the file's, under a lock, and rewrite the tables.

    Grid processes on different cores (e.g. `--archs mlp` and `--archs cnn`) share one results
    file: each rereads it before writing, so neither drops the other's rows.
    """
    with open(out / f".vpae_{dataset}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        rows = read_rows(out, dataset, sizes, getattr(args, "seed", None))
        rows.update({key: r for key, r in mine.items() if key[0] == dataset})
        write_tables(list(rows.values()), out, dataset, sizes, args)
    return rows


def table_order(row: dict) -> tuple:
    """The papers' row order: the architecture in `nets.ARCHS` order (MLP before CNN), K, then
    head (rows of other settings after, by setting)."""
    settings = tuple(int(row[s]) if row.get(s) not in (None, "") else -1 for s in SETTINGS)
    return list(nets.ARCHS).index(row["arch"]), int(row["K"]), HEADS.index(row["head"]), settings


def write_tables(rows, out: Path, dataset: str, sizes: Sizes, args) -> None:
    rows = sorted((r for r in rows if r["dataset"] == dataset), key=table_order)
    tmp = out / f".vpae_{dataset}.csv.tmp"
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, FIELDS)
        w.writeheader()
        w.writerows(rows)
    tmp.replace(out / f"vpae_{dataset}.csv")
    # The settings, stated once when every row shares them, else as columns.
    made = [row_settings(r, sizes, getattr(args, "seed", None)) for r in rows]
    varying = [s for s in SETTINGS if len({m[s] for m in made}) > 1]
    common = made[0] if made else dict.fromkeys(SETTINGS, "?")
    cols = ["arch", "head", "K", *varying, "params", "paper_params", "s_per_epoch",
            "paper_s_per_epoch", "L2", "paper_L2", "PSNR_dB", "test_nll_nats", "fid_recon",
            "fid_prior", "fid_gaussian", "status"]  # fmt: skip
    fid_counts = sorted({int(r["fid_images"]) for r in rows if r.get("fid_images")})
    epochs = "per row" if "epochs" in varying else common["epochs"]
    batch = "per row" if "batch_size" in varying else common["batch_size"]
    n_eval = "per row (eval_images)" if "eval_images" in varying else common["eval_images"]
    lines = [
        f"# VPAE Table 1/2 on {dataset}: ours beside the paper's",
        "",
        f"Command: `python -m experiments.vpae_table {args.command_line}`. Ours: {epochs} "
        f"epochs, batch {batch}, Adam 1e-3, {jax.default_backend().upper()} "
        f"({jax.device_count()} device(s)); s/epoch is ours on this machine vs the paper's GTX "
        "1060. L2 = mean squared error x 100 of the clipped reconstruction of the first "
        f"{n_eval} test images; PSNR of that error; test NLL in "
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
    lines += [
        "| " + " | ".join(str(m[c] if c in varying else r.get(c, "")) for c in cols) + " |"
        for r, m in zip(rows, made, strict=True)
    ]
    (out / f"vpae_{dataset}.md").write_text("\n".join(lines) + "\n")


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """The module docstring as written, and every option's default (none where it is None:
    its help says what happens)."""

    def _get_help_string(self, action):
        if action.default is None:
            return action.help
        return super()._get_help_string(action)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--datasets", default="fashion_mnist,mnist", help="comma-separated")
    p.add_argument("--archs", default="mlp,cnn", help="comma-separated: mlp, cnn")
    p.add_argument("--heads", default=",".join(HEADS), help="comma-separated")
    p.add_argument("--ks", default="1,10", help="mixture sizes K, comma-separated")
    p.add_argument("--epochs", type=int, default=PAPER_EPOCHS, help="training epochs")
    p.add_argument("--batch-size", type=int, default=PAPER_BATCH, help="global batch size")
    p.add_argument("--seed", type=int, default=0, help="first seed (+1 per non-finite restart)")
    p.add_argument("--train-examples", type=int, default=0, help="0: the whole training set")
    p.add_argument("--eval-images", type=int, default=PAPER_EVAL_IMAGES,
                   help="first test images of the L2 column")  # fmt: skip
    p.add_argument("--nll-images", type=int, default=0, help="0: the whole test set")
    p.add_argument("--force", action="store_true", help="build heads the paper marks OOM")
    p.add_argument(
        "--out", default=None,
        help=f"folder of the tables and figures (default: {DEFAULT_OUT}; with --quick "
        f"{QUICK_OUT}); the committed tables: --out experiments/results",
    )  # fmt: skip
    p.add_argument("--runs", default="runs/vpae", help="folder of the run folders")
    p.add_argument("--data-dir", default=None, help="dataset folder (default: see jaxae.data)")
    p.add_argument(
        "--quick", action="store_true",
        help="a small subset, for CI-sized checks: fashion_mnist, mlp, K in 1,2, heads "
        f"{','.join(QUICK_HEADS)}, 1 epoch on 2048 images, 200 eval and NLL images",
    )  # fmt: skip
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
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
    args.command_line = " ".join(argv if argv is not None else sys.argv[1:])
    if args.quick:
        args.datasets, args.archs, args.ks = "fashion_mnist", "mlp", "1,2"
        args.heads = ",".join(QUICK_HEADS)
        args.epochs, args.train_examples, args.eval_images, args.nll_images = 1, 2048, 200, 200
    if args.out is None:
        args.out = QUICK_OUT if args.quick else DEFAULT_OUT
    return args


def main(argv=None):
    args = parse_args(argv)
    out = Path(args.out)
    (out / "figures").mkdir(parents=True, exist_ok=True)
    mesh = parallel.data_mesh()

    rows, mine = {}, {}  # mine: the rows this process made, merged into the file
    n_fid = args.fid_samples
    for dataset in args.datasets.split(","):
        ds = jdata.load(dataset, data_dir=args.data_dir)
        sizes = Sizes.of(ds)
        settings = requested(args, sizes)
        done = read_rows(out, dataset, sizes, args.seed)
        rows.update(done)
        ks = [int(k) for k in args.ks.split(",")]
        cells = list(grid([dataset], args.archs.split(","), args.heads.split(","), ks))
        for cell in cells:
            key = cell_key(*cell, settings)
            if key in done and done[key]["status"] == "ok":
                if args.redraw:
                    redraw(done[key], ds, sizes, args, out / "figures")
                continue
            if args.redraw:
                continue
            t0 = time.perf_counter()
            print(f"== {' '.join(map(str, cell))}", flush=True)
            row = run_one(ds, *cell, settings, sizes, args, mesh, out / "figures")
            rows[key] = mine[key] = row
            print(json.dumps(row), f"({time.perf_counter() - t0:.0f} s)", flush=True)
            save_rows(mine, out, dataset, sizes, args)
        if args.fid_samples:
            for cell in cells:
                key = cell_key(*cell, settings)
                row = rows.get(key)
                if row and row["status"] == "ok" and str(row.get("fid_images")) != str(n_fid):
                    rows[key] = mine[key] = {**row, **fid_columns(row, sizes, args)}
                    save_rows(mine, out, dataset, sizes, args)
        if any(key[0] == dataset for key in mine):  # else the file stays as it is
            rows.update(save_rows(mine, out, dataset, sizes, args))
    return list(rows.values())


def fid_columns(row: dict, sizes: Sizes, args) -> dict:
    """FID of a finished row's reconstructions and samples, by `jaxae.evaluate`."""
    n = args.fid_samples
    run = row_run(row, sizes, args)
    print(f"== FID of {run.name} on {n} images", flush=True)
    result = evaluate.evaluate_run(
        run, num_samples=n, quick=n != metrics.PROTOCOL_N,
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
