"""The regularized-autoencoder family compared (issue 24): every model on MNIST and Fashion-MNIST,
each decoded through every ex-post sampler, beside the numbers the papers publish.

    python -m experiments.regularized_table --cpu --out experiments/results/regularized
    python -m experiments.regularized_table --cpu --ablation --out experiments/results/regularized
    python -m experiments.regularized_table                      # paper scale (a GPU)
    python -m experiments.regularized_table --tiny --out /tmp/rt # a smoke run: minutes

The first two write the committed tables and figures; without --out everything goes under
``runs/regularized_table``. Each file name carries the profile (``regularized_mnist_cpu.md``;
paper scale: ``regularized_mnist.md``), so profiles never overwrite each other.

Rows (one run folder each, ``<runs>/<dataset>-<row>[-cpu|-tiny]``, trained by
`experiments.train.train_and_evaluate` from the row's config file):
- gmmdae, rae (L2 decoder penalty), rae_gp (the gradient penalty: ``rae.regularizer='gp'``), wae
  (WAE-MMD), aae (WAE-GAN), maskaae, flexae: `experiments/configs/<kind>.py:DATASET[,cpu]`, the
  family's shared protocol (`experiments/configs/family.py`: the GMM-DAE appendix's dcgan
  network on 32 x 32 images, latent 16, the GMM-DAE's 10);
- betavae: `betavae.py:DATASET[,cpu],100,15`, the PAE paper's tuned beta = 100, C = 15 (Eq. 15;
  tuned there for its infoGAN network at K = 32, not for this network);
- vae: `twostage_vae.py` (beta 1): its 'vae' sampler is the 2-stage VAE (Dai & Wipf 2019);
- pae: `pae.py:16[,cpu]` (K = 16, the family's latent size), its own preprocessing (centred,
  dequantized 28 x 28 pixels) and its own latent flow as its 'flow' sampler;
- vpae: `vpae.py:HEAD,K,mlp` with the VPAE head of the lowest L2 among the MLP rows of the
  committed ``experiments/results/vpae_<dataset>.csv`` (chosen from that table, never from this
  one's metrics; ties: the first row), 20 epochs in every profile.

Samplers, for every row: 'prior' (the model's own: the GMM-DAE's mixture, MaskAAE's masked
N(0, I), FlexAE's generator, else N(0, I)), 'gaussian' (a full-covariance Gaussian of the
training codes), and the ex-post samplers fitted by `jaxae.evaluate.fit_sampler` into the run
folder, on the run's own training split: 'gmm' (10 components, the RAE's), 'flow' (RealNVP;
the PAE's is its own) and 'vae' (the 2-stage VAE's second stage).

Metrics: the test reconstruction MSE per pixel over the whole test set (the 28 x 28 pixels of
the images: a padded model's 2-pixel border is left out), and FID, KID and precision/recall
(`jaxae.evaluate.distribution_metrics`) of the reconstructions of the first --samples test
images and of --samples images from each sampler, against the first --samples test images
(standard: 10,000; `jaxae.metrics.protocol_note` says how a table departs from it). Every FID is
of 32 x 32 images: the 28 x 28 models' (PAE, VPAE) outputs are zero-padded like the test
images, so every row is scored against the same reference features. GMM-DAE: NMI and mAP of
its mixture-component assignment (`model.assign`) of the test images against their labels
(`jaxae.metrics.nmi`, `cluster_map`; appendix Table 5). WAE and MaskAAE: the active latent
dimensions (MaskAAE: mask alpha >= 0.1; WAE: all) and the NAC of the test codes over them
(`jaxae.regularizers.nac`; the slides' Table 2).

Resuming: a run is trained only when this script owns it (new, or saved with exactly the
config it would train: `pae_cli.check_owned`; another run stops the script, naming the fields)
and is not finished; --no-train uses the runs that exist and skips the others. Every result
cell (a row's model metrics, one row x sampler) is cached as JSON under ``<out>/cache``, keyed
by every setting that changes it (the run's config, its checkpoint's steps and weights sha256,
the sampler and its fit options, --samples, --seed, the Inception weights), so a rerun computes
only what is missing or changed (the figures are redrawn from the cache). A row whose training
fails is listed as failed in the table; the script finishes the others, then exits with status
1 naming it. ``--ablation`` draws the GMM-DAE appendix's Figure 3 instead (`ablation`).

Profiles. Paper scale: each config file as it is, 10,000 samples, the samplers' default fits.
``--cpu``: each config's ``cpu`` profile (the family: width 16 instead of 128, 10 epochs
instead of 100, the decay at epochs 6 and 8; the PAE: 3 autoencoder epochs instead of 500, its
flow at most 100 epochs; the VPAE as in the paper, 20 epochs), 1,000 samples, the flow and
second-stage VAE samplers fitted for at most 10 epochs (patience 3); the table lists every
departure, read from the configs. ``--tiny``: 3 steps of width-8 networks, 64 samples.

Runtime of --cpu, measured on this 2-core machine on 2026-12-07 (the two datasets in two
processes side by side, with other jobs): training 2-6 minutes per plain row, 17-20 for MaskAAE
and FlexAE (5 critic steps, each encoding its batch); each cell (1,000 images through Inception
and their FID) 30-90 s, a sampler fit 5-40 s; MNIST's 11 rows about two hours in all, the same
again for Fashion-MNIST. --rows, --samplers and --datasets run parts of it; every invocation
resumes the last.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import os
import sys
import time
from pathlib import Path

import jax
import numpy as np

from experiments import pae_cli
from experiments.configs import (
    aae,
    betavae,
    family,
    flexae,
    gmmdae,
    maskaae,
    pae,
    rae,
    twostage_vae,
    vpae,
    wae,
)
from jaxae import (
    checkpoint,
    evaluate,
    inception,
    metrics,
    models,
    objectives,
    parallel,
    plots,
    priors,
    regularizers,
    train,
)
from jaxae import config as jconfig
from jaxae import data as jdata

VERSION = 1  # of the cached cells: raise it when the way a cell is computed changes
OUT = "runs/regularized_table"
RUNS = "runs/regularized"
COMMITTED = "experiments/results/regularized"
DATASETS = family.DATASETS
PAE_K = 16  # the family's latent size
BETA, CAPACITY = 100, 15  # the PAE paper's tuned beta-VAE (its Table 1, Eq. 15)
SAMPLERS = ("prior", "gaussian", "gmm", "flow", "vae")
# --cpu draws from fewer samplers (each 1,000 images through Inception take about a minute on
# 2 cores): the model's own prior, the GMM (the RAE's) and the flow, plus the second-stage VAE of
# the 2-stage VAE's own row; --samplers overrides.
PROFILE_SAMPLERS = {"paper": SAMPLERS, "cpu": ("prior", "gmm", "flow"), "tiny": SAMPLERS}
ROW_SAMPLERS = {"vae": ("vae",)}  # a row's own sampler, always drawn
FITTED = ("gmm", "flow", "vae")  # fitted into the run folder by evaluate.fit_sampler
ACTIVE = 0.1  # MaskAAE: a latent dimension is active when its mask alpha >= 0.1 (slides Fig. 5)
FIGURE_CODES = 2_000  # test codes in a latent figure
GRID = 10  # images per row of a sample grid
CLASS_NAMES = {
    "mnist": tuple(str(i) for i in range(10)),
    "fashion_mnist": ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                      "Sneaker", "Bag", "Ankle boot"),
}  # fmt: skip

ROWS = {  # row -> its label in the tables
    "gmmdae": "GMM-DAE",
    "rae": "RAE (L2)",
    "rae_gp": "RAE (GP)",
    "wae": "WAE-MMD",
    "aae": "WAE-GAN (AAE)",
    "maskaae": "MaskAAE",
    "flexae": "FlexAE",
    "betavae": f"beta-VAE (beta {BETA}, C {CAPACITY})",
    "vae": "VAE (beta 1)",
    "pae": f"PAE (K={PAE_K})",
    "vpae": "VPAE",
}
TINY_ROWS = ("gmmdae", "wae")

# The profiles: the number of samples, and the ex-post samplers' fit options (`priors.fit`).
SAMPLES = {"paper": evaluate.STANDARD_COUNT, "cpu": evaluate.QUICK_COUNT, "tiny": 64}
SAMPLER_OPTIONS = {
    "paper": {"gmm": {"components": 10}, "flow": {}, "vae": {}},
    # the flow and the second-stage VAE: at most 10 epochs (default 100), patience 3 (10);
    # an epoch of either on 50,000 codes takes 5-7 s on 2 busy cores
    "cpu": {"gmm": {"components": 10}, "flow": {"epochs": 10, "patience": 3},
            "vae": {"epochs": 10, "patience": 3}},
    "tiny": {"gmm": {"components": 10, "restarts": 1, "iters": 20},
             "flow": {"epochs": 1, "layers": 2, "hidden": 16},
             "vae": {"epochs": 1, "hidden": [16]}},
}  # fmt: skip

# --- The published numbers, copied from the papers ------------------------------------------

SLIDES = (
    "A. P. Prathosh, 'The landscape of Regularized Auto-Encoders for Generative modeling' "
    "(slides, IIT Delhi)"
)
PUBLISHED = {
    "slides_t1": {
        "source": f"{SLIDES}, Table 1: FID of generated images",
        "values": {  # model -> {dataset: FID}
            "VAE (cross-entr.)": {"mnist": 16.6, "fashion_mnist": 43.6},
            "VAE (fixed variance)": {"mnist": 52.0, "fashion_mnist": 84.6},
            "VAE (learned variance)": {"mnist": 54.5, "fashion_mnist": 60.0},
            "VAE + Flow": {"mnist": 54.8, "fashion_mnist": 62.1},
            "WAE-MMD": {"mnist": 115.0, "fashion_mnist": 101.7},
            "WAE-GAN": {"mnist": 12.4, "fashion_mnist": 31.5},
            "2-Stage VAE": {"mnist": 12.6, "fashion_mnist": 29.3},
            "MAAE": {"mnist": 10.5, "fashion_mnist": 28.4},
        },
    },
    "slides_t2": {
        "source": f"{SLIDES}, Table 2: active dimensions m_A and NAC at a model capacity",
        "values": {  # model -> {dataset: (capacity, m_A, NAC)}
            "WAE": {"mnist": (64, 64, 0.027), "fashion_mnist": (128, 128, 0.025)},
            "MAAE": {"mnist": (64, 13, 0.020), "fashion_mnist": (128, 40, 0.019)},
        },
    },
    "slides_t3": {
        "source": f"{SLIDES}, Table 3: MNIST reconstruction / generation FID",
        "values": {  # model -> {dataset: (reconstruction FID, generation FID)}
            "VAE": {"mnist": (65.10, 57.04)},
            "β-VAE": {"mnist": (7.91, 24.31)},
            "VAE-Vamprior": {"mnist": (11.01, 49.75)},
            "VAE-IOP": {"mnist": (8.01, 32.61)},
            "WAE-GAN": {"mnist": (8.06, 13.30)},
            "AE + GMM (L2)": {"mnist": (8.69, 12.14)},
            "RAE + GMM (L2)": {"mnist": (6.15, 7.30)},
            "VAE + FLOW": {"mnist": (8.62, 20.17)},
            "InjFlow": {"mnist": (7.40, 35.96)},
            "InjFlow + GMM": {"mnist": (7.40, 9.93)},
            "2-S VAE": {"mnist": (6.38, 7.41)},
            "MaskAAE": {"mnist": (8.46, 10.52)},
            "FlexAE": {"mnist": (4.33, 4.69)},
        },
    },
    "slides_t4": {
        "source": f"{SLIDES}, Table 4: MNIST precision / recall (Sajjadi et al. 2018)",
        "values": {  # model -> {dataset: (precision, recall)}
            "VAE": {"mnist": (0.69, 0.76)},
            "2S-VAE": {"mnist": (0.97, 0.98)},
            "RAE + GMM (L2)": {"mnist": (0.98, 0.98)},
            "MaskAAE": {"mnist": (0.94, 0.96)},
            "FlexAE": {"mnist": (0.99, 0.99)},
        },
    },
    "gmmdae_a23": {
        "source": "Saseendran et al. 2021 (GMM-DAE), appendix A.2.3: sample FID (10,000 images, "
        "mean +- spread of 5 runs)",
        "values": {  # sampler -> {dataset: (FID, +-)}
            "prior": {"mnist": (13.11, 0.9), "fashion_mnist": (33.70, 0.8)},
            "fitted GMM": {"mnist": (12.82, 0.6), "fashion_mnist": (26.62, 0.8)},
        },
    },
    "gmmdae_t5": {
        "source": "Saseendran et al. 2021 (GMM-DAE), appendix A.4, Table 5: clustering of the "
        "test images",
        "values": {
            "mnist": {"nmi": 0.72, "map": 0.75},
            "fashion_mnist": {"nmi": 0.60, "map": 0.61},
        },  # fmt: skip
    },
    "pae_t1": {
        "source": "Boehm & Seljak 2020 (PAE), Table 1: Fashion-MNIST at K = 32, sample FID and "
        "reconstruction FID",
        "values": {  # model -> {dataset: (sample FID, reconstruction FID or None)}
            "AE": {"fashion_mnist": (102.9, 31.5)},
            "VAE": {"fashion_mnist": (102.4, None)},
            "beta-VAE": {"fashion_mnist": (56.3, None)},
            "PAE": {"fashion_mnist": (35.4, 31.5)},
        },
    },
}
# (row, sampler) -> the published entries it is compared with: (source, model)
SAMPLE_MATCHES = {
    ("gmmdae", "prior"): (("gmmdae_a23", "prior"),),
    ("gmmdae", "gmm"): (("gmmdae_a23", "fitted GMM"),),
    ("rae", "gmm"): (("slides_t3", "RAE + GMM (L2)"), ("slides_t4", "RAE + GMM (L2)")),
    ("wae", "prior"): (("slides_t1", "WAE-MMD"),),
    ("aae", "prior"): (("slides_t1", "WAE-GAN"), ("slides_t3", "WAE-GAN")),
    ("maskaae", "prior"): (("slides_t1", "MAAE"), ("slides_t3", "MaskAAE"),
                           ("slides_t4", "MaskAAE")),
    ("flexae", "prior"): (("slides_t3", "FlexAE"), ("slides_t4", "FlexAE")),
    ("betavae", "prior"): (("slides_t3", "β-VAE"), ("pae_t1", "beta-VAE")),
    ("vae", "prior"): (("slides_t1", "VAE (learned variance)"), ("slides_t3", "VAE"),
                       ("slides_t4", "VAE"), ("pae_t1", "VAE")),
    ("vae", "flow"): (("slides_t1", "VAE + Flow"), ("slides_t3", "VAE + FLOW")),
    ("vae", "vae"): (("slides_t1", "2-Stage VAE"), ("slides_t3", "2-S VAE"),
                     ("slides_t4", "2S-VAE")),
    ("pae", "prior"): (("pae_t1", "AE"),),
    ("pae", "flow"): (("pae_t1", "PAE"),),
}  # fmt: skip
# row -> the published reconstruction FIDs of the same model
RECON_MATCHES = {
    "rae": (("slides_t3", "RAE + GMM (L2)"),),
    "aae": (("slides_t3", "WAE-GAN"),),
    "maskaae": (("slides_t3", "MaskAAE"),),
    "flexae": (("slides_t3", "FlexAE"),),
    "betavae": (("slides_t3", "β-VAE"),),
    "vae": (("slides_t3", "VAE"),),
    "pae": (("pae_t1", "PAE"),),
}
SOURCE_NAMES = {"slides_t1": "slides T1", "slides_t2": "slides T2", "slides_t3": "slides T3",
                "slides_t4": "slides T4", "gmmdae_a23": "GMM-DAE A.2.3",
                "gmmdae_t5": "GMM-DAE T5", "pae_t1": "PAE T1 (K=32)"}  # fmt: skip
TITLES = {"mnist": "MNIST", "fashion_mnist": "Fashion-MNIST"}
PROTOCOLS_DIFFER = (
    "The published numbers were made under the papers' own protocols, which may differ from "
    "ours: network widths and training length (the papers train to convergence), the sample "
    "and reference counts (the GMM-DAE appendix: 10,000 samples, 5 runs), the Inception "
    "implementation and resolution, and the latent sizes (the slides' Table 2 at capacity 64 / "
    "128; the PAE paper at K = 32). The slides' Table 4 precision/recall is Sajjadi et al. "
    "2018's; ours is Kynkäänniemi et al. 2019's improved precision/recall (k = 3)."
)


# --- Configs and runs ---------------------------------------------------------------------------


RESULTS = Path(__file__).resolve().parent / "results"  # the committed tables


def best_vpae_head(dataset: str, results: Path = RESULTS) -> dict:
    """The VPAE head of the lowest L2 among the MLP rows of the committed
    ``experiments/results/vpae_<dataset>.csv`` (ties: the first row).

    Returns:
      {'head', 'K', 'L2', 'paper_L2'} of that row.

    Raises:
      FileNotFoundError: no such table; ValueError: it has no finished MLP row.
    """
    path = results / f"vpae_{dataset}.csv"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: the committed VPAE table, from which the VPAE row's head "
                                "is chosen, is missing")  # fmt: skip
    with open(path, newline="") as f:
        rows = [r for r in csv.DictReader(f)
                if r["arch"] == "mlp" and r["status"] == "ok" and r["L2"]]  # fmt: skip
    if not rows:
        raise ValueError(f"{path} has no finished MLP row to choose the VPAE head from")
    best = min(rows, key=lambda r: float(r["L2"]))  # min keeps the first of equal values
    return {"head": best["head"], "K": int(best["K"]), "L2": float(best["L2"]),
            "paper_L2": float(best["paper_L2"]) if best["paper_L2"] else None}  # fmt: skip


def row_config(row: str, dataset: str, profile: str):
    """The config a row's run is trained with under a profile ('paper', 'cpu', 'tiny')."""
    arg = dataset if profile == "paper" else f"{dataset},cpu"
    makers = {"gmmdae": gmmdae, "rae": rae, "rae_gp": rae, "wae": wae, "aae": aae,
              "maskaae": maskaae, "flexae": flexae}  # fmt: skip
    if row in makers:
        c = makers[row].get_config(arg)
        if row == "rae_gp":
            c.rae.regularizer = "gp"
    elif row == "betavae":
        c = betavae.get_config(f"{arg},{BETA},{CAPACITY}")
    elif row == "vae":
        c = twostage_vae.get_config(arg)
    elif row == "pae":
        c = pae.get_config(f"{PAE_K}" if profile == "paper" else f"{PAE_K},cpu")
        c.data.dataset = dataset
    elif row == "vpae":
        best = best_vpae_head(dataset)
        c = vpae.get_config(f"{best['head']},{best['K']},mlp")
        c.data.dataset = dataset
    else:
        raise ValueError(f"unknown row {row!r}: the rows are {', '.join(ROWS)}")
    if profile == "tiny":  # a few steps of narrow networks: the script's own smoke test
        if c.model.arch == "dcgan":  # the infoGAN network has no width option
            c.model.width = 8
        c.training.update(epochs=1, max_steps=3, keep_checkpoints=1)
        c.data.val_size = min(c.data.val_size, 100)
        if c.flow.epochs:
            c.flow.update(epochs=1, patience=1)
    return jconfig.validate(c)


def run_name(dataset: str, row: str, profile: str) -> str:
    """``<dataset>-<row>`` (the VPAE's: ``-vpae-<head>-k<K>``), ``-cpu`` / ``-tiny`` appended."""
    name = f"{dataset}-{row}"
    if row == "vpae":
        best = best_vpae_head(dataset)
        name += f"-{best['head']}-k{best['K']}"
    return name + ("" if profile == "paper" else f"-{profile}")


def departures(row: str, dataset: str, profile: str) -> list[str]:
    """The fields in which a row's config under `profile` differs from its paper-scale one:
    ``'model.width 16 (paper 128)'``."""
    if profile == "paper":
        return []
    have = jconfig.flatten(row_config(row, dataset, profile))
    want = jconfig.flatten(row_config(row, dataset, "paper"))
    return [f"{k} {_setting(k, have[k])} (paper {_setting(k, want.get(k))})"
            for k in sorted(have) if have[k] != want.get(k)]  # fmt: skip


def _setting(key: str, value) -> str:
    """A config value as the table writes it."""
    if key == "model.width" and value == 0:  # 0 means the network's own default width
        return "0 (the network's default: dcgan 128)"
    return _text(value)


def _text(value) -> str:
    """Lists (tuples read back from JSON) as tuples, everything else as `str` does."""
    return str(tuple(value)) if isinstance(value, list) else str(value)


def finished(run: Path, config, num_train: int) -> bool:
    """Whether the run has trained all its steps (and fitted its flow, for a PAE): its
    ``summary.json`` (written after training) says so."""
    try:
        summary = json.loads((run / "summary.json").read_text())
    except (OSError, json.JSONDecodeError):
        return False
    steps = train.total_steps(config.training, num_train - config.data.val_size)
    return summary.get("steps") == steps and (not config.flow.epochs or "flow" in summary)


def has_checkpoint(run: Path) -> bool:
    """Whether the run folder holds a checkpoint (a step folder under ``checkpoints/``)."""
    folder = run / "checkpoints"
    return folder.is_dir() and any(p.name.isdigit() for p in folder.iterdir())


# --- The cache of result cells ------------------------------------------------------------------


def _canonical(key: dict) -> str:
    """The one JSON text of a cache key (sorted keys), what its file name hashes."""
    return json.dumps(key, sort_keys=True, default=_text)


def cell_path(out: Path, dataset: str, row: str, cell: str, key: dict) -> Path:
    """``<out>/cache/<dataset>-<row>-<cell>-<sha256 of the key>.json``."""
    digest = hashlib.sha256(_canonical(key).encode()).hexdigest()[:16]
    return out / "cache" / f"{dataset}-{row}-{cell}-{digest}.json"


def read_cell(path: Path, key: dict):
    """(result, arrays) of a cached cell made with exactly `key`, or None."""
    try:
        saved = json.loads(path.read_text())
        if _canonical(saved["key"]) != _canonical(json.loads(_canonical(key))):
            return None
        with np.load(path.with_suffix(".npz"), allow_pickle=False) as z:
            return saved["result"], dict(z)
    except (OSError, KeyError, ValueError):  # missing, cut or foreign: compute it again
        return None


def write_cell(path: Path, key: dict, result: dict, arrays: dict) -> None:
    """The arrays, then the JSON (atomically, last: its presence marks a finished cell)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp-{os.getpid()}.npz")
    np.savez(tmp, **arrays)
    os.replace(tmp, path.with_suffix(".npz"))
    tmp = path.with_suffix(f".tmp-{os.getpid()}.json")
    tmp.write_text(json.dumps({"key": json.loads(_canonical(key)), "result": result}, indent=1))
    os.replace(tmp, path)


# --- Evaluation of one row ----------------------------------------------------------------------


def _to32(images: np.ndarray) -> np.ndarray:
    """Images at 32 x 32: 28 x 28 ones zero-padded as the test images are (`jdata.pad32`)."""
    return images if images.shape[1] == 32 else jdata.pad32(images)


def _to28(images: np.ndarray) -> np.ndarray:
    """The original 28 x 28 pixels of images (a 32 x 32 model's border cropped)."""
    top = (images.shape[1] - 28) // 2
    return images[:, top : top + 28, top : top + 28]


class Scorer:
    """Inception features against the first `n` test images of a dataset at 32 x 32, computed
    once (`evaluate.reference_features`, cached across runs)."""

    def __init__(self, dataset: str, n: int, data_dir, mesh, log):
        self.dataset, self.n, self.data_dir, self.mesh, self.log = dataset, n, data_dir, mesh, log
        self._ref = None

    @property
    def ref(self) -> np.ndarray:
        """The reference features [n, 2048], computed (or read from the cache) on first use."""
        if self._ref is None:
            self._ref = evaluate.reference_features(
                self.dataset, "test", self.n, pad_to_32=True, data_dir=self.data_dir,
                mesh=self.mesh, progress=False,
            )  # fmt: skip
        return self._ref

    def __call__(self, images: np.ndarray) -> dict:
        """FID, KID, precision/recall of images [n, H, W, 1] in [0, 1] (padded to 32 x 32)."""
        x = _to32(np.asarray(images, np.float32))
        if not np.isfinite(x).all():
            raise ValueError("the images hold NaN or infinite values (a diverged model)")
        feats = inception.features(x, mesh=self.mesh, progress=False)
        return evaluate.distribution_metrics(
            feats, self.ref, quick=self.n != evaluate.STANDARD_COUNT
        )


def model_cell(restored, row: str, test: jdata.Split, score: Scorer, mesh) -> tuple[dict, dict]:
    """A row's model metrics (reconstruction MSE and FID, the GMM-DAE's clustering, the
    active dimensions and NAC) and the arrays its figures need."""
    fns = evaluate.functions(restored)
    model = restored.model
    native = tuple(model.image_shape)
    x = test.images.astype(np.float32) / 255.0  # [N, 28, 28, 1]
    x_in = x if native[0] == 28 else _to32(x)
    recon = evaluate._batched(fns.reconstruct, x_in, mesh=mesh)
    result = {"mse": float(np.mean((_to28(recon) - x) ** 2)), "mse_images": len(x)}
    try:
        result["reconstruction"] = score(recon[: score.n])
    except ValueError as e:  # a diverged model: its MSE says so too
        result["reconstruction"] = {"error": str(e)}
    arrays = {"test": x_in[:GRID], "recon": recon[:GRID]}
    if fns.encode is not None:
        codes = evaluate._batched(fns.encode, x_in, mesh=mesh)
        # float16: the figures need no more, and the cache stays small
        arrays.update(codes=codes[:FIGURE_CODES].astype(np.float16),
                      labels=test.labels[:FIGURE_CODES])  # fmt: skip
        own = getattr(model, "prior_sample", None)
        key = jax.random.PRNGKey(7)
        if own is not None:
            prior = own(key, FIGURE_CODES)
        else:
            prior = jax.random.normal(key, (FIGURE_CODES, codes.shape[1]))
        arrays["prior"] = np.asarray(prior, np.float16)
        if row == "gmmdae":  # appendix A.4: the component each test image is assigned to
            clusters = assign(model, codes)
            result["nmi"] = metrics.nmi(test.labels, clusters)
            result["map"] = metrics.cluster_map(test.labels, clusters)
        if row in ("maskaae", "wae"):  # the slides' Table 2
            d = codes.shape[1]
            active = np.ones(d, bool)
            if row == "maskaae":
                alpha = np.asarray(model.alpha())
                active = alpha >= ACTIVE
                result["alpha"] = [round(float(a), 4) for a in alpha]
            result["latent_dim"] = d
            result["active_dims"] = int(active.sum())
            result["nac"] = float(regularizers.nac(codes, active))
    return result, arrays


def assign(model, codes: np.ndarray) -> np.ndarray:
    """The GMM-DAE's mixture component of each code [N, d] (`GMMDAE.assign` of the images
    whose codes they are): [N] ints.

    On the host's default device, unsharded: the mixture's triangular solves inside
    `parallel.data_parallel` hung on two CPU devices here (every thread waiting on a futex).
    """
    return np.asarray(model.prior.assign(np.asarray(codes, np.float32)))


def _json_equal(a, b) -> bool:
    return _canonical(a) == _canonical(b)


def ensure_fitted(run: Path, name: str, restored, seed: int, options: dict, data_dir, log):
    """The ex-post sampler `name` of the run, fitted (`evaluate.fit_sampler`) unless one fitted
    on this checkpoint with the same seed and options is already in the run folder."""
    record = run / evaluate.SAMPLER_DIR / name / "fitted_on.json"
    try:
        sampler = evaluate.load_sampler(run, name, restored)
        on = json.loads(record.read_text())
        if on.get("seed") == seed and _json_equal(on.get("options"), options):
            return sampler
    except (OSError, ValueError, checkpoint.CheckpointError):
        pass  # not fitted, fitted on another checkpoint, or unreadable: fit it again
    log(f"  fit the {name!r} sampler")
    return evaluate.fit_sampler(run, name, seed=seed, data_dir=data_dir, restored=restored,
                                **options)  # fmt: skip


def evaluate_row(ctx, dataset: str, row: str, run: Path, test: jdata.Split) -> dict:
    """Every cell of one row, each read from the cache or computed (and cached)."""
    args, log = ctx.args, ctx.log
    restored = pae_cli.restore(run)
    fns = evaluate.functions(restored)
    base = {
        "version": VERSION,
        "dataset": dataset,
        "row": row,
        # the config as saved (not as restored, which fills fields added since with defaults):
        # a cell stays valid when the library gains a config field
        "config": jconfig.flatten(restored.meta["config"]),
        "checkpoint": pae_cli.checkpoint_key(restored),
        "inception": inception.weights_sha256(inception.weights_path(None)),
        "samples": ctx.n,
        "resolution": 32,
    }
    out = {"label": ROWS[row], "run": str(run), "stage_steps": list(restored.stage_steps),
           "params": models.num_params(restored.model), "samplers": {}, "arrays": {}}  # fmt: skip
    summary = run / "summary.json"
    if summary.is_file():
        s = json.loads(summary.read_text())
        out["fit_seconds"] = s.get("fit_seconds")
        if "flow" in s:
            out["flow_seconds"] = s["flow"].get("fit_seconds")
    if row == "vpae":
        out["vpae"] = best = best_vpae_head(dataset)
        out["label"] = f"VPAE ({best['head']}, K={best['K']})"

    key = {**base, "cell": "model"}
    path = cell_path(ctx.out, dataset, row, "model", key)
    cached = read_cell(path, key)
    if cached is None:
        log(f"  model metrics ({len(test.images):,} test images; FID on {ctx.n:,})")
        t0 = time.perf_counter()
        result, arrays = model_cell(restored, row, test, ctx.scorer, ctx.mesh)
        result["seconds"] = round(time.perf_counter() - t0, 1)
        write_cell(path, key, result, arrays)
        ctx.computed.append(f"{dataset}/{row}/model")
        cached = (result, arrays)
    out["model"], out["arrays"]["model"] = cached

    if fns.decode is None:  # no vector code (not among the rows, but any model may be asked)
        return out
    own = None  # evaluate.samplers: prior, gaussian (and the PAE's flow), built once if needed
    is_pae = hasattr(restored.model, "sample_codes")
    for name in row_samplers(ctx, row):
        options = {} if name in ("prior", "gaussian") or (name == "flow" and is_pae) else (
            SAMPLER_OPTIONS[ctx.profile][name])  # fmt: skip
        key = {**base, "cell": f"sampler-{name}", "sampler": name, "options": options,
               "seed": args.seed}  # fmt: skip
        path = cell_path(ctx.out, dataset, row, f"sampler-{name}", key)
        cached = read_cell(path, key)
        if cached is None:
            t0 = time.perf_counter()
            if options:
                try:
                    fitted = ensure_fitted(run, name, restored, args.seed, options,
                                           args.data_dir, log)  # fmt: skip
                except ValueError as e:  # e.g. non-finite codes of a diverged model
                    log(f"  sampler {name}: fit failed: {e}")
                    out["samplers"][name] = {"error": f"fit failed: {e}"}
                    continue
                draw = lambda k, n, s=fitted: np.asarray(s.sample(k, n), np.float32)  # noqa: E731
            else:
                if own is None:
                    dc, tc = restored.config.data, restored.config.training
                    split = jdata.load(
                        dc.dataset, data_dir=args.data_dir, val_size=dc.val_size, seed=tc.seed
                    ).train.images  # the run's own training split
                    own = evaluate.samplers(fns, split, dc.pad_to_32, restored.model)
                if name not in own:  # e.g. 'flow' of a PAE whose flow is not fitted
                    log(f"  sampler {name}: not available for this model")
                    out["samplers"][name] = {"error": "not available for this model"}
                    continue
                draw = own[name]
            log(f"  sampler {name}: {ctx.n:,} samples")
            # one key per sampler name, whichever samplers this invocation runs
            codes = draw(jax.random.fold_in(jax.random.PRNGKey(args.seed),
                                            SAMPLERS.index(name)), ctx.n)  # fmt: skip
            images = evaluate._batched(fns.decode, np.asarray(codes, np.float32), mesh=ctx.mesh)
            try:
                result = ctx.scorer(images)
            except ValueError as e:  # not cached: a failure is reported, not remembered
                log(f"  sampler {name} failed: {e}")
                out["samplers"][name] = {"error": str(e)}
                continue
            result["seconds"] = round(time.perf_counter() - t0, 1)
            write_cell(path, key, result, {"samples": images[:GRID]})
            ctx.computed.append(f"{dataset}/{row}/{name}")
            cached = (result, {"samples": images[:GRID]})
        out["samplers"][name], out["arrays"][name] = cached
    return out


# --- Figures --------------------------------------------------------------------------------


def draw_row(figures: Path, tag: str, dataset: str, row: str, res: dict) -> list[Path]:
    """A row's sample grid (test images, reconstructions, then each sampler's samples) and its
    latent pair plot (the test codes' 4 dimensions of largest variance, coloured by label, over
    samples of the model's prior in grey)."""
    arrays = res["arrays"]
    rows = [arrays["model"]["test"], arrays["model"]["recon"]]
    labels = ["test images", "reconstructions"]
    for name in res["samplers"]:
        if name in arrays:
            rows.append(arrays[name]["samples"])
            labels.append(f"{name} samples")
    label = res["label"]
    paths = [plots.image_grid(rows, figures / f"{tag}-{row}-samples.png", row_labels=labels,
                              title=f"{label} on {TITLES[dataset]}")]  # fmt: skip
    m = arrays["model"]
    if "codes" in m and len(m["codes"]):
        variance = np.nan_to_num(np.var(m["codes"].astype(np.float32), axis=0), nan=-1.0)
        dims = sorted(np.argsort(-variance)[: min(4, len(variance))].tolist())
        paths.append(plots.latent_pairs(
            m["codes"], m["labels"], figures / f"{tag}-{row}-latent.png", dims=dims,
            reference=m["prior"], class_names=CLASS_NAMES[dataset],
            title=f"{label} on {TITLES[dataset]}: test codes (dims of largest variance)",
        ))  # fmt: skip
    return paths


# --- Tables ---------------------------------------------------------------------------------


def _fmt(value, digits: int = 2) -> str:
    if value is None:
        return ""
    if isinstance(value, float) and not np.isfinite(value):
        return "nan"
    return f"{value:.{digits}f}"


def _published_samples(dataset: str, row: str, sampler: str) -> dict:
    """{column: text} of the published values a (row, sampler) is compared with, written with
    the papers' decimals."""
    fids, pr = [], []
    for source, model in SAMPLE_MATCHES.get((row, sampler), ()):
        value = PUBLISHED[source]["values"][model].get(dataset)
        if value is None:
            continue
        name = SOURCE_NAMES[source]
        if source == "slides_t1":
            fids.append(f"{value:.1f} ({name})")
        elif source == "slides_t3":
            fids.append(f"{value[1]:.2f} ({name})")
        elif source == "gmmdae_a23":
            fids.append(f"{value[0]:.2f} ± {value[1]:.1f} ({name})")
        elif source == "pae_t1":
            fids.append(f"{value[0]:.1f} ({name})")
        elif source == "slides_t4":
            pr.append(f"{value[0]:.2f} / {value[1]:.2f} ({name})")
    cols = {"published FID": "; ".join(fids), "published P / R": "; ".join(pr)}
    return {k: v for k, v in cols.items() if v}


def _published_recon(dataset: str, row: str) -> str:
    """The published reconstruction FIDs of a row's model, with the papers' decimals."""
    texts = []
    for source, model in RECON_MATCHES.get(row, ()):
        value = PUBLISHED[source]["values"][model].get(dataset)
        if value is not None:
            number = f"{value[0]:.2f}" if source == "slides_t3" else f"{value[1]:.1f}"
            texts.append(f"{number} ({SOURCE_NAMES[source]})")
    return "; ".join(texts)


def markdown(dataset: str, results: dict, ctx, failed: dict | None = None) -> str:
    """The dataset's tables: the models, the samples, the GMM-DAE's clustering, the active
    dimensions and NAC, each with the published values beside ours, and the protocol; `failed`:
    {row: why} of the rows that failed to train."""
    n, profile = ctx.n, ctx.profile
    title = TITLES[dataset]
    where = {"paper": "paper scale", "cpu": "CPU profile", "tiny": "tiny smoke profile"}[profile]
    lines = [f"# The regularized-autoencoder family on {title} ({where})", "",
             f"Command: `{ctx.args.command}`", ""]  # fmt: skip
    if profile != "paper":
        lines += [f"The {where} departs from the paper-scale configs (per row, from the config "
                  "files):", ""]  # fmt: skip
        groups: dict[str, list[str]] = {}
        for row in results:
            text = "; ".join(departures(row, dataset, profile)) or "none"
            groups.setdefault(text, []).append(row)
        lines += [f"- {', '.join(ROWS[r] for r in rows)}: {text}" for text, rows in groups.items()]
        lines.append("")
    opts = SAMPLER_OPTIONS[profile]
    lines += [
        f"Samples: {n:,} generated images per sampler and {n:,} reconstructions against the "
        f"first {n:,} test images (the standard protocol: {evaluate.STANDARD_COUNT:,}). "
        f"Protocol: {metrics.protocol_note(n, n, n != evaluate.STANDARD_COUNT)} Every FID is of "
        "32 x 32 images (the 28 x 28 PAE and VPAE outputs zero-padded like the test images); "
        "the MSE is per pixel over the 28 x 28 pixels of the whole test set.",
        "",
        "Ex-post samplers (`jaxae.evaluate.fit_sampler`, on each run's training split): "
        f"gmm {_options(opts['gmm'])}, flow {_options(opts['flow'])}, vae "
        f"{_options(opts['vae'])} (the PAE's flow is its own); seed {ctx.args.seed}. "
        + ("" if ctx.args.samplers is not None or profile != "cpu" else
           f"This profile draws from {', '.join(PROFILE_SAMPLERS['cpu'])} and each row's own "
           f"sampler ({', '.join(f'{ROWS[r]}: {v[0]}' for r, v in ROW_SAMPLERS.items())}); "
           f"paper scale from all of {', '.join(SAMPLERS)}."),
        "",
        "## Models",
        "",
        "| model | steps | test MSE | recon. FID | KID | precision | recall | published recon. "
        "FID | train s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]  # fmt: skip
    for row, res in results.items():
        m, r = res["model"], res["model"]["reconstruction"]
        label = res["label"]
        steps = "+".join(str(s) for s in res["stage_steps"])
        secs = sum(s for s in (res.get("fit_seconds"), res.get("flow_seconds")) if s)
        scores = (f"failed: {r['error']} | | |" if "error" in r else
                  f"{_fmt(r['fid'])} | {r['kid']:.4f} | {_fmt(r['precision'])} | "
                  f"{_fmt(r['recall'])}")  # fmt: skip
        lines.append(f"| {label} | {steps} | {m['mse']:.5f} | {scores} | "
                     f"{_published_recon(dataset, row)} | {secs:.0f} |")  # fmt: skip
    for row, why in (failed or {}).items():
        lines.append(f"| {ROWS[row]} | training failed: {why} | | | | | | | |")
    pub_cols = ["published FID", "published P / R"]
    lines += ["", "## Samples", "",
              "| model | sampler | FID | KID | precision | recall | " + " | ".join(pub_cols) + " |",
              "|---|---|---|---|---|---|" + "---|" * len(pub_cols)]  # fmt: skip
    for row, res in results.items():
        for name, s in res["samplers"].items():
            pub = _published_samples(dataset, row, name)
            if "error" in s:
                cells = [res["label"], name, f"failed: {s['error']}", "", "", ""]
                lines.append("| " + " | ".join(cells + [pub.get(c, "") for c in pub_cols]) + " |")
                continue
            lines.append(
                f"| {res['label']} | {name} | {_fmt(s['fid'])} | {s['kid']:.4f} | "
                f"{_fmt(s['precision'])} | {_fmt(s['recall'])} | "
                + " | ".join(pub.get(c, "") for c in pub_cols)
                + " |"
            )
    if "gmmdae" in results:
        m, pub = results["gmmdae"]["model"], PUBLISHED["gmmdae_t5"]["values"][dataset]
        lines += ["", "## GMM-DAE: clustering of the test images by mixture component", "",
                  "| | ours | published (appendix Table 5) |", "|---|---|---|",
                  f"| NMI | {m['nmi']:.3f} | {pub['nmi']:.2f} |",
                  f"| mAP | {m['map']:.3f} | {pub['map']:.2f} |"]  # fmt: skip
    if {"wae", "maskaae"} & set(results):
        lines += ["", "## Active latent dimensions and NAC (the slides' Table 2)", "",
                  "| model | latent | active dims | NAC | published capacity / active / NAC |",
                  "|---|---|---|---|---|"]  # fmt: skip
        for row, model in (("wae", "WAE"), ("maskaae", "MAAE")):
            if row in results:
                m = results[row]["model"]
                cap, act, nac = PUBLISHED["slides_t2"]["values"][model][dataset]
                lines.append(f"| {ROWS[row]} | {m['latent_dim']} | {m['active_dims']} | "
                             f"{m['nac']:.3f} | {cap} / {act} / {nac:.3f} |")  # fmt: skip
    used = sorted({s for row in results for name in SAMPLERS
                   for s, _ in SAMPLE_MATCHES.get((row, name), ())}
                  | {s for row in results for s, _ in RECON_MATCHES.get(row, ())}
                  | ({"gmmdae_t5"} if "gmmdae" in results else set())
                  | ({"slides_t2"} if {"wae", "maskaae"} & set(results) else set()))  # fmt: skip
    lines += ["", "Published values:", "",
              *(f"- {SOURCE_NAMES[s]}: {PUBLISHED[s]['source']}." for s in used), "",
        PROTOCOLS_DIFFER, "",
        f"Figures (`figures/`): `{ctx.tag(dataset)}-<row>-samples.png` (test images, "
        "reconstructions, then each sampler's samples) and `-latent.png` (the test codes' four "
        "dimensions of largest variance coloured by label, over prior samples in grey).",
        ""]  # fmt: skip
    return "\n".join(lines)


def _options(options: dict) -> str:
    return "(" + ", ".join(f"{k} {v}" for k, v in options.items()) + ")" if options else (
        "(defaults)")  # fmt: skip


def write_outputs(dataset: str, results: dict, ctx) -> None:
    """``regularized_<tag>.md`` and ``.json`` under --out (rows of earlier invocations with the
    same profile, samples and seed kept), then each row's figures."""
    tag = ctx.tag(dataset)
    path = ctx.out / f"regularized_{tag}.json"
    settings = {"profile": ctx.profile, "samples": ctx.n, "seed": ctx.args.seed}
    rows = {}
    if path.is_file():
        try:
            old = json.loads(path.read_text())
            if all(old.get(k) == v for k, v in settings.items()):
                rows = {r: v for r, v in old["rows"].items() if r not in results}
        except (OSError, ValueError, KeyError):
            rows = {}
    for row, res in results.items():
        rows[row] = {k: v for k, v in res.items() if k != "arrays"}
    failed = {k.split("/", 1)[1]: why for k, why in ctx.failed.items()
              if k.startswith(f"{dataset}/")}  # fmt: skip
    rows = {r: v for r, v in rows.items() if r not in failed}
    order = {r: i for i, r in enumerate(ROWS)}
    rows = dict(sorted(rows.items(), key=lambda kv: order[kv[0]]))
    record = {**settings, "command": ctx.args.command, "dataset": dataset,
              "protocol": metrics.protocol_note(ctx.n, ctx.n, ctx.n != evaluate.STANDARD_COUNT),
              "published": PUBLISHED, "rows": rows, "failed": failed}  # fmt: skip
    path.write_text(json.dumps(record, indent=1, default=_text) + "\n")
    (ctx.out / f"regularized_{tag}.md").write_text(markdown(dataset, rows, ctx, failed))
    for row, res in results.items():
        try:
            draw_row(ctx.out / "figures", tag, dataset, row, res)
        except ValueError as e:  # e.g. no finite code to plot: the tables still stand
            ctx.log(f"{dataset} {row}: no figure: {e}")


# --- The GMM-DAE ablation (appendix Figure 3) ---------------------------------------------------

ABLATION_DIGITS = (1, 8)
ABLATION_MEANS = ((3.0, 3.0), (-3.0, -3.0))
ABLATION_LOSSES = {"cov": "covariance term only", "ks": "KS term only",
                   "both": "both terms (the GMM-DAE)"}  # fmt: skip
ABLATION_EPOCHS = {"paper": 30, "cpu": 10, "tiny": 2}


def ablation_config(loss: str, profile: str):
    """The GMM-DAE config of one ablation model: the family's protocol with a 2-D latent,
    constant learning rate (the appendix gives no schedule for it), no validation split, every
    epoch's checkpoint kept; `loss` 'cov', 'ks' or 'both' switches the terms."""
    c = gmmdae.get_config("mnist" if profile == "paper" else "mnist,cpu")
    epochs = ABLATION_EPOCHS[profile]
    c.model.latent_dim = 2
    c.gmmdae.update(use_cov=loss in ("cov", "both"), use_ks=loss in ("ks", "both"),
                    prior_means=ABLATION_MEANS)  # fmt: skip
    c.data.val_size = 0
    c.optimizer.decay_epochs = ()
    c.training.update(epochs=epochs, keep_checkpoints=epochs)
    if profile == "tiny":
        c.model.width = 8
        c.training.batch_size = 64
    return jconfig.validate(c)


def train_subset(config, workdir: Path, images: np.ndarray, progress: bool) -> None:
    """Train (or resume) the config's GMM-DAE on `images` (uint8 [N, 32, 32, 1]) with
    `jaxae.train.fit`, as `experiments.train.train_and_evaluate` does on a whole dataset (the
    digits are saved in each checkpoint's meta).
    """
    dc, tc = config.data, config.training
    settings = config.gmmdae.to_dict()
    spec = {**config.model.to_dict(), "image_shape": list(images.shape[1:]), "scale": dc.scale,
            "settings": settings}  # fmt: skip
    model = models.build({**spec, "seed": tc.seed}, force=False)
    graphdef, params, model_state = objectives.split(model, train=True)
    update = train.model_update(model, graphdef, config.optimizer, len(images) // tc.batch_size)
    pre = jdata.Preprocess(scale=dc.scale)
    train.fit(
        config, workdir, params=params, model_state=model_state, update=update,
        train={"image": images}, prepare=lambda b, key: {**b, "image": pre(b["image"], key)},
        progress=progress, model=model.spec,
        extra_meta={"digits": list(ABLATION_DIGITS)},
    )  # fmt: skip


def ablation(ctx) -> dict:
    """The GMM-DAE appendix's Figure 3: a GMM-DAE with each regularizer term alone and with
    both, trained on MNIST's digits 1 and 8 with a 2-D prior of two unit Gaussians at (3, 3) and
    (-3, -3); the test codes after the first and the last epoch, coloured by digit, over prior
    samples. Writes ``figures/gmmdae_ablation_<profile>.png`` and ``gmmdae_ablation_<...>.md``
    (the NMI of the component assignment against the digit, for each model and epoch)."""
    args, log, profile = ctx.args, ctx.log, ctx.profile
    raw_train = jdata.load_raw("mnist", "train", args.data_dir)
    raw_test = jdata.load_raw("mnist", "test", args.data_dir)

    def subset(split, limit=None):
        pick = np.flatnonzero(np.isin(split.labels, ABLATION_DIGITS))[:limit]
        return jdata.pad32(split.images[pick]), split.labels[pick]

    limit = 256 if profile == "tiny" else None
    train_images, _ = subset(raw_train, limit)
    test_images, test_labels = subset(raw_test, limit)
    suffix = "" if profile == "paper" else f"_{profile}"
    panels, nmis, runs = {}, {}, {}
    for loss, what in ABLATION_LOSSES.items():
        config = ablation_config(loss, profile)
        run = ctx.runs / f"ablation-mnist-18-{loss}{'' if profile == 'paper' else '-' + profile}"
        runs[loss] = run
        steps_per_epoch = len(train_images) // config.training.batch_size
        total = config.training.epochs * steps_per_epoch
        if not args.no_train:
            try:
                pae_cli.check_owned(run, config)
            except (pae_cli.RunNotOwnedError, checkpoint.CheckpointError) as e:
                sys.exit(f"error: {e}")
            if _latest_step(run) != total:
                log(f"train the ablation's {what} ({config.training.epochs} epochs)")
                train_subset(config, run, train_images, progress=False)
                ctx.trained.append(str(run))
        elif not has_checkpoint(run):
            log(f"skip {run}: no run (--no-train)")
            continue
        panels[what] = {}
        for epoch in (1, config.training.epochs):
            try:  # every epoch's checkpoint is kept (ablation_config)
                restored = checkpoint.restore_params(run, step=epoch * steps_per_epoch)
            except (FileNotFoundError, checkpoint.CheckpointError) as e:
                sys.exit(f"error: {run}, epoch {epoch}: {e}")
            fns = evaluate.functions(restored)
            x = test_images.astype(np.float32) / 255.0
            codes = evaluate._batched(fns.encode, x, mesh=ctx.mesh)
            clusters = assign(restored.model, codes)
            when = f"after {epoch} epoch{'s' if epoch > 1 else ''}"
            panels[what][when] = (codes, test_labels)
            nmis[what, when] = metrics.nmi(test_labels, clusters)
    weights = np.full(len(ABLATION_MEANS), 1.0 / len(ABLATION_MEANS))
    mixture = priors.gmm(weights, np.asarray(ABLATION_MEANS), np.ones((len(ABLATION_MEANS), 2)))
    prior = np.asarray(mixture.sample(jax.random.PRNGKey(0), 2_000))
    figure = ctx.out / "figures" / f"gmmdae_ablation{suffix}.png"
    title = "GMM-DAE ablation (appendix Fig. 3): MNIST 1 and 8, test codes"
    plots.latent_panels(panels, figure, reference=prior, title=title)
    config = ablation_config("both", profile)
    lines = [
        "# The GMM-DAE appendix's Figure 3: each regularizer term alone", "",
        f"Command: `{args.command}`", "",
        f"MNIST digits {' and '.join(map(str, ABLATION_DIGITS))} ({len(train_images):,} training, "
        f"{len(test_images):,} test images, 32 x 32), a 2-D GMM-DAE prior of two equally "
        "weighted unit Gaussians at (3, 3) and (-3, -3); the family's dcgan network (width "
        f"{config.model.width or 128}), {config.training.epochs} epochs of batch "
        f"{config.training.batch_size}, Adam {config.optimizer.learning_rate} (no decay; the "
        "appendix trains for 30 epochs), reconstruction weight 0.005. Figure: "
        f"`figures/{figure.name}` (test codes coloured by digit over 2,000 prior samples in "
        "grey, after the first and the last epoch).", "",
        "NMI of the mixture-component assignment against the digit (test images):", "",
        "| model | " + " | ".join(next(iter(panels.values()), {})) + " |",
        "|---|" + "---|" * len(next(iter(panels.values()), {})),
    ]  # fmt: skip
    for what, row in panels.items():
        lines.append(f"| {what} | " + " | ".join(f"{nmis[what, w]:.3f}" for w in row) + " |")
    (ctx.out / f"gmmdae_ablation{suffix}.md").write_text("\n".join(lines) + "\n")
    log(f"wrote {figure}")
    return {"figure": str(figure), "nmi": {f"{a} {b}": v for (a, b), v in nmis.items()},
            "runs": {k: str(v) for k, v in runs.items()}}  # fmt: skip


def _latest_step(run: Path):
    """The newest checkpoint step of a run folder, None when it has none."""
    if not has_checkpoint(run):
        return None
    with checkpoint.Checkpointer(run / "checkpoints", save_every=1, read_only=True) as ckpt:
        return ckpt.latest_step()


# --- Command line -------------------------------------------------------------------------------


class Context:
    """What every step of one invocation shares."""

    def __init__(self, args):
        self.args = args
        self.profile = "tiny" if args.tiny else "cpu" if args.cpu else "paper"
        self.n = args.samples or SAMPLES[self.profile]
        self.out = Path(args.out)
        self.runs = Path(args.runs)
        self.mesh = parallel.data_mesh()
        self.trained, self.computed = [], []  # what this invocation trained and computed
        self.failed = {}  # '<dataset>/<row>': why its training failed
        self.scorer = None
        t0 = time.perf_counter()
        self.log = lambda msg: print(f"[{time.perf_counter() - t0:6.0f} s] {msg}", flush=True)

    def tag(self, dataset: str) -> str:
        """The dataset and the profile, as the output files are named: 'mnist_cpu'."""
        return dataset + ("" if self.profile == "paper" else f"_{self.profile}")


def row_samplers(ctx, row: str) -> tuple[str, ...]:
    """The samplers drawn for `row`: --samplers, else the profile's and the row's own."""
    if ctx.args.samplers is not None:
        return ctx.args.samplers
    names = PROFILE_SAMPLERS[ctx.profile] + ROW_SAMPLERS.get(row, ())
    return tuple(s for s in SAMPLERS if s in names)


def _names(text: str, known, what: str, p) -> tuple[str, ...]:
    names = tuple(t for t in text.split(",") if t)
    bad = [t for t in names if t not in known]
    if bad or not names:
        p.error(f"--{what}: unknown {', '.join(bad) or '(none given)'}; choose from "
                f"{', '.join(known)} (comma-separated)")  # fmt: skip
    return names


def parse_args(argv=None) -> argparse.Namespace:
    """The command line (see the module docstring); ``args.command`` is the exact command."""
    p = argparse.ArgumentParser(description=__doc__, prog="python -m experiments.regularized_table",
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--cpu", action="store_true",
                   help="the CPU profile of every config (DATASET,cpu): narrower networks, fewer "
                   f"epochs, {SAMPLES['cpu']:,} samples, shorter sampler fits")  # fmt: skip
    p.add_argument("--tiny", action="store_true",
                   help=f"a smoke run: 3 steps of width-8 networks, rows {','.join(TINY_ROWS)}, "
                   f"{SAMPLES['tiny']} samples, 1-epoch sampler fits")  # fmt: skip
    p.add_argument("--datasets", default=",".join(DATASETS), help="comma-separated")
    p.add_argument("--rows", default=None, help=f"comma-separated subset of {','.join(ROWS)}")
    p.add_argument("--samplers", default=None,
                   help=f"comma-separated subset of {','.join(SAMPLERS)} (default: all; --cpu: "
                   f"{','.join(PROFILE_SAMPLERS['cpu'])} and each row's own)")  # fmt: skip
    p.add_argument(
        "--samples",
        type=int,
        default=None,
        help="generated images per sampler (default: 10,000; --cpu 1,000; --tiny 64)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the sampler fits and draws")
    p.add_argument("--runs", default=RUNS, help=f"run folders' root (default: {RUNS})")
    p.add_argument("--out", default=OUT, help=f"tables, figures and the result cache (default: "
                   f"{OUT}); the committed ones: --out {COMMITTED}")  # fmt: skip
    p.add_argument("--data-dir", default=None, help="dataset folder (default: see jaxae.data)")
    p.add_argument("--no-train", action="store_true",
                   help="train nothing: only the rows whose runs exist")  # fmt: skip
    p.add_argument("--ablation", action="store_true",
                   help="the GMM-DAE appendix's Figure 3 (MNIST 1 and 8, a 2-D prior) instead "
                   "of the table")  # fmt: skip
    argv = list(sys.argv[1:] if argv is None else argv)
    args = p.parse_args(argv)
    args.command = pae_cli.command("experiments.regularized_table", argv)
    if args.cpu and args.tiny:
        p.error("--cpu and --tiny are two profiles: choose one")
    if args.samples is not None and args.samples < 4:
        p.error(f"--samples must be at least 4 (precision/recall's k = 3), got {args.samples}")
    args.datasets = _names(args.datasets, DATASETS, "datasets", p)
    default_rows = ",".join(TINY_ROWS if args.tiny else ROWS)
    args.rows = _names(args.rows or default_rows, tuple(ROWS), "rows", p)
    if args.samplers is not None:
        args.samplers = _names(args.samplers, SAMPLERS, "samplers", p)
    return args


def main(argv=None) -> dict:
    """Train what is missing, evaluate every cell not cached, write the tables and figures.

    Returns:
      {dataset: {row: result}} (or the ablation's summary), plus 'trained' and 'computed': the
      runs this invocation trained and the cells it computed (not read from the cache).
    """
    args = parse_args(argv)
    if "JAX_NUM_CPU_DEVICES" not in os.environ:  # Inception on CPU: one device per core
        jax.config.update("jax_num_cpu_devices", len(os.sched_getaffinity(0)))
    ctx = Context(args)
    (ctx.out / "figures").mkdir(parents=True, exist_ok=True)
    if args.ablation:
        result = ablation(ctx)
        return {"ablation": result, "trained": ctx.trained, "computed": ctx.computed}
    results = {}
    for dataset in args.datasets:
        results[dataset] = table(ctx, dataset)
    if ctx.failed:  # after every other row is done and written
        sys.exit("error: these rows failed to train (see the table):\n" + "\n".join(
            f"  {row}: {why}" for row, why in ctx.failed.items()))  # fmt: skip
    return {**results, "trained": ctx.trained, "computed": ctx.computed}


def table(ctx, dataset: str) -> dict:
    """One dataset's rows: train (only owned runs), evaluate, write."""
    args, log = ctx.args, ctx.log
    test = jdata.load_raw(dataset, "test", args.data_dir)
    num_train = len(jdata.load_raw(dataset, "train", args.data_dir).images)
    ctx.scorer = Scorer(dataset, ctx.n, args.data_dir, ctx.mesh, log)
    configs = {row: row_config(row, dataset, ctx.profile) for row in args.rows}
    runs = {row: ctx.runs / run_name(dataset, row, ctx.profile) for row in args.rows}
    if not args.no_train:  # every run checked before any training (pae_cli.train's rule)
        problems = []
        for row in args.rows:
            try:
                pae_cli.check_owned(runs[row], configs[row])
            except (pae_cli.RunNotOwnedError, checkpoint.CheckpointError) as e:
                problems.append(str(e))
        if problems:
            sys.exit("error: " + "\n".join(problems))
    from experiments import train as etrain  # the trainer: only experiments import it

    results = {}
    for row in args.rows:
        run, config = runs[row], configs[row]
        if not args.no_train and not finished(run, config, num_train):
            log(f"{dataset} {row}: train {run}")
            try:
                etrain.train_and_evaluate(config, run, data_dir=args.data_dir, progress=False)
            except Exception as e:  # one row's failure must not cost the others' hours
                message = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
                log(f"{dataset} {row}: training failed: {message}")
                ctx.failed[f"{dataset}/{row}"] = message
                continue
            ctx.trained.append(str(run))
        if not has_checkpoint(run):
            log(f"{dataset} {row}: skipped, no run at {run} (--no-train)")
            continue
        log(f"{dataset} {row}: evaluate {run}")
        results[row] = evaluate_row(ctx, dataset, row, run, test)
        write_outputs(dataset, {row: results[row]}, ctx)  # a partial table after every row
        log(f"wrote {ctx.out / f'regularized_{ctx.tag(dataset)}.md'}")
    if ctx.failed:
        write_outputs(dataset, {}, ctx)
    return {row: {k: v for k, v in res.items() if k != "arrays"} for row, res in results.items()}


if __name__ == "__main__":
    main()
