"""Out-of-distribution detection with a PAE's scores (Boehm & Seljak 2020, Sec. 2.2 and 4.2):
the paper's Table 2 and Figure 5 on Fashion-MNIST, or your own run against your own outliers.

Your own run: a PAE trained by ``experiments/train.py`` on any data source (a folder of
PNG/JPEG images, an .npz file, tfds:NAME), scored against outlier sets of any such source:

    python -m experiments.pae_ood --cpu --run runs/mine --outlier other=path/to/other_folder

``--run RUN`` names the run folder, whose latent flow is fitted: a config with flow.epochs > 0,
like ``experiments/configs/pae.py:32,cpu`` with the overrides data.dataset=path/to/my_folder,
data.image_size=32, data.channels=3 and data.val_size=500 (the images held out for the noise
map of Eq. 8 and the flow's early stopping; the config's 5,000 suits Fashion-MNIST's 60,000; a
folder needs more than that plus one batch, 128 for the autoencoder and 256 for the flow).
In-distribution: the test split of the run's own data (its
saved config's data section: data.dataset, data.test or data.test_fraction). ``--outlier
NAME=SOURCE`` (repeatable; ``--outlier SOURCE`` names the set after its file or folder) adds an
outlier set: a folder of images (all of them, class subfolders or flat), an .npz file
(``images`` [N, H, W(, C)]), ``tfds:NAME`` or a built-in name (its test split), resized and
converted to the images the run was trained on (data.image_size, data.channels,
data.pad_to_32; PIL bilinear, `jaxae.data.conform`). Outputs ``pae_ood_<run folder name>.md``,
``.json`` and ``_roc.png`` under --out (never into the run folder): the AUROC of each score
against each outlier set, the run's test images being the negatives. --cpu: the first 100
images of every set get the Laplace scores (c) and (d) with 10 L-BFGS steps, and the intervals
300 bootstrap replicates; without it 10,000 images, 100 steps and 1,000 replicates.

The paper's experiment:

    python -m experiments.pae_ood --cpu --out experiments/results   # ~2 h on 2 CPU cores
    python -m experiments.pae_ood                        # paper scale (a GPU)
    python -m experiments.pae_ood --cpu --extra kmnist=/path/kmnist.npz

The first command writes the committed ``experiments/results/pae_ood_cpu.*``; without --out,
tables and PNGs go to ``runs/pae_results``. It resumes only runs it made with its own settings
(`pae_cli.check_owned`: another run stops it, naming the differing fields); ``--no-train``
uses the runs as they are and writes nothing into them.

Fashion-MNIST runs of your own: ``--runs ROOT`` holds one run folder per K named ``k<K>`` (a
symlink to a run works), and, unless ``--no-baselines``, ``vae_k32`` and ``vpae_t_diag_k10``;
``--ks`` picks the K. For example, a PAE trained with ``experiments/configs/pae.py:8,cpu`` in
``runs/mine``:

    mkdir -p runs/my_runs && ln -s "$PWD/runs/mine" runs/my_runs/k8
    python -m experiments.pae_ood --cpu --no-train --runs runs/my_runs --ks 8 --no-baselines

In-distribution: the Fashion-MNIST test set. Outliers: the MNIST test set, Omniglot (28 x 28,
inverted to white on black), and the Fashion-MNIST test images flipped left-right (hflip) and
upside down (vflip); ``--extra NAME=SOURCE`` (another name of --outlier) adds any source as
above, made 28 x 28 grey (repeatable).

For each K it trains (or resumes) the PAE in ``<runs>/k<K>`` (`experiments/configs/pae.py`), and
the baselines the library already trains: the paper's VAE at K=32 (`pae_vae.py`, its negative
ELBO) and the VPAE head with the best test NLL in `experiments/results/vpae_fashion_mnist.md`
(t_diag, K=10: its NLL). Scores, higher meaning "more of an outlier" (minus each log-density):
- (a) ``reconstruction``: the first term of Eq. 12 at f(x) (the paper's "AE reconstruction
  error", weighted by the noise map of Eq. 8);
- (b) ``latent_density``: log p(f(x)) under the flow (the paper's "PAE density");
- ``eq12``: Eq. 12 at f(x), (a) + (b)'s flow terms;
- (c) ``eq12_map``: Eq. 12 at the MAP z' of Eq. 9 (L-BFGS from f(x), a fixed step budget);
- (d) ``log_evidence``: the Laplace approximation of log p(x), Eq. 11 with Eq. 10's precision.
(c) and (d) need an optimisation per image: they are computed on the first ``--laplace-n``
images of every set. Nothing is tuned on the outliers: every score is used as defined.
AUROC with 95% percentile-bootstrap intervals (`metrics.auroc_ci`); Figure 5: the ratio of the
true- to the false-positive rate at a 5% false-negative rate against K, for (a) and (b).
Outputs go to ``--out`` (``pae_ood_<cpu|paper>.md``, ``.json`` and PNGs). Scores are cached in
``<out>/scores/<run name>/<set>.npz`` (never in the run folders), keyed on the images' bytes and
on the checkpoint (each stage's step and the weights' sha256); a rerun only computes what is
missing.
"""

from __future__ import annotations

import json
import re
import sys
import time
from pathlib import Path

import numpy as np

from experiments import pae_cli
from experiments.configs import pae as pae_config
from experiments.configs import pae_vae, vpae
from jaxae import checkpoint, evaluate, metrics, models, pae, plots
from jaxae import data as jdata

PAPER = {  # Table 2 of the paper: AUROC, F-MNIST vs each outlier set
    "PAE density, K=64 (paper)": dict(mnist=0.997, omniglot=0.981, hflip=0.698, vflip=0.891),
    "AE reconstruction error, K=4 (paper)": dict(mnist=0.986, omniglot=0.916, hflip=0.689,
                                                 vflip=0.880),
}  # fmt: skip
PAE_SCORES = ("reconstruction", "latent_density", "eq12", "eq12_map", "log_evidence")
LABELS = {
    "reconstruction": "(a) reconstruction term of Eq. 12",
    "latent_density": "(b) PAE density log p(f(x))",
    "eq12": "Eq. 12 at f(x)",
    "eq12_map": "(c) Eq. 12 at the MAP",
    "log_evidence": "(d) Laplace log p(x), Eq. 11",
}
LAPLACE = ("eq12_map", "log_evidence")


class Profile:
    def __init__(self, cpu: bool):
        self.name = "cpu" if cpu else "paper"
        self.ks = (4, 8, 16, 32, 64)
        self.laplace_n = 100 if cpu else 10_000
        self.map_steps = 10 if cpu else 100
        self.n_boot = 300 if cpu else 1000

    def pae(self, k: int):
        return pae_config.get_config(f"{k},cpu" if self.name == "cpu" else str(k))

    def vae(self):
        c = pae_vae.get_config("32")
        if self.name == "cpu":
            c.training.epochs, c.training.keep_checkpoints = 3, 1
        return c

    def vpae(self):
        return vpae.get_config("t_diag,10")


class OutlierShapeError(ValueError):
    """Outlier images that cannot be made the shape the model takes (too large to pad to 32 x
    32, or not square for a model of another size); the message says how to fix them."""


IN = "in_distribution"  # the run's own test images, among the sets of the own-run mode
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]*")  # a set's name is a file name of the cache


def outlier_source(spec: str) -> tuple[str, str]:
    """``NAME=SOURCE``, or ``SOURCE`` named after its file, folder or data set -> (name,
    source); the source is anything `jaxae.data.parse_source` reads."""
    name, sep, source = spec.partition("=")
    if not sep:
        source = spec
        name = source[5:].replace("/", "_") if source.startswith("tfds:") else Path(source).stem
    if not _NAME.fullmatch(name) or not source:
        raise ValueError(f"--outlier {spec!r}: expected NAME=SOURCE (or a SOURCE whose name is "
                         "one), NAME of letters, digits and _.+- (it names the set's cache "
                         "file), SOURCE a folder of images, an .npz file or tfds:NAME")  # fmt: skip
    return name, source


def load_outlier(spec: str, shape, *, data_dir=None, image_size: int = 0,
                 pad_to_32: bool = False) -> tuple[str, np.ndarray]:  # fmt: skip
    """An outlier set as the model takes it: (name, images [N, H, W, C]).

    Args:
      spec: ``NAME=SOURCE`` or ``SOURCE`` (`outlier_source`): a folder of images (all of them)
        or an .npz file (its ``images``), or ``tfds:NAME`` or a built-in name (the test split).
      shape: (H, W, C), the model's image shape.
      data_dir: where built-in and tfds data are (`jaxae.data.load`).
      image_size, pad_to_32: the run's data.image_size and data.pad_to_32: for a run that pads
        its images, resized to `image_size` (0: as they are), then padded; for any other run,
        resized to H x W (`jaxae.data.conform`). Channels are converted to C.

    Raises:
      jaxae.data.DatasetNotFoundError: no such file, folder or prepared data set; no image in it.
      OutlierShapeError: images that cannot be made H x W.
      ValueError: a bad spec, or files that cannot be read (the message names them).
    """
    name, source = outlier_source(spec)
    what = f"--outlier {name}"
    h, w, c = (int(d) for d in shape)
    size = image_size if pad_to_32 else (h if h == w else 0)
    try:  # a folder or file is all outliers: nothing is split off
        images = jdata.read_all(source, image_size=size, channels=c, data_dir=data_dir)
    except (jdata.DatasetNotFoundError, ValueError, TypeError) as e:  # the readers name `source`
        error = jdata.DatasetNotFoundError if isinstance(e, FileNotFoundError) else type(e)
        raise error(f"{what}: {e}") from None
    if pad_to_32 and max(images.shape[1:3]) <= 32:
        images = jdata.pad32(images)
    if images.shape[1:] != (h, w, c):
        fix = ("the run pads its images to 32 x 32 (data.pad_to_32): give images of at most "
               "32 x 32" if pad_to_32 else f"resize them to {h} x {w} first (jaxae resizes to "
               "squares only)")  # fmt: skip
        got = " x ".join(map(str, images.shape[1:]))
        raise OutlierShapeError(f"{what}: images of {got} from {source}, but the model takes "
                                f"{h} x {w} x {c}: {fix}")  # fmt: skip
    return name, images


def datasets(data_dir, extras=()) -> dict[str, np.ndarray]:
    """The in-distribution set first ('fashion_mnist'), then every outlier set; `extras`:
    --extra specs (`load_outlier`), made the Fashion-MNIST images' shape."""
    fm = jdata.load_raw("fashion_mnist", "test", data_dir).images
    sets = {
        "fashion_mnist": fm,
        "mnist": jdata.load_raw("mnist", "test", data_dir).images,
        "omniglot": jdata.load_raw("omniglot", "test", data_dir).images,
        "hflip": jdata.hflip(fm),
        "vflip": jdata.vflip(fm),
    }
    for spec in extras:
        name, images = load_outlier(spec, fm.shape[1:], data_dir=data_dir)
        if name in sets:
            raise ValueError(f"--extra {name}: the name is taken by a built-in set")
        sets[name] = images
    for name, images in sets.items():
        if len(images) == 0:
            raise ValueError(f"outlier set {name!r} is empty")
    return sets


def _cached(path: Path, settings: dict, compute) -> dict[str, np.ndarray]:
    if path.exists():
        with np.load(path, allow_pickle=False) as f:
            if json.loads(str(f["settings"])) == settings:
                return {k: f[k] for k in f.files if k != "settings"}
    out = compute()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, settings=json.dumps(settings), **out)
    tmp.replace(path)
    return out


def cache_settings(restored: checkpoint.Restored, images, **settings) -> dict:
    """What a cached score file must match: the images (their sha256, shape and dtype), the
    checkpoint (each stage's step and the weights' sha256) and the scoring settings."""
    return {"images": pae_cli.images_key(images), "checkpoint": pae_cli.checkpoint_key(restored),
            "kind": restored.spec["kind"], **settings}  # fmt: skip


def pae_scores(restored: checkpoint.Restored, cache: Path, name: str, images, prof: Profile,
               log) -> dict[str, np.ndarray]:  # fmt: skip
    """The PAE scores of `images` (set `name`) by the PAE `restored`, cached in
    ``<cache>/<name>.npz`` (`cache_settings`; `main` passes ``<out>/scores/<run name>``, never
    the run folder): {score: [N]}, Laplace scores [laplace_n]."""
    scale = restored.config.data.scale
    settings = cache_settings(restored, images, laplace_n=prof.laplace_n,
                              map_steps=prof.map_steps)  # fmt: skip

    def compute():
        t0 = time.perf_counter()
        out = pae.score(restored.model, images, scale=scale, laplace_scores=False)
        n = min(prof.laplace_n, len(images))
        lap = pae.score(restored.model, images[:n], scale=scale, map_steps=prof.map_steps)
        out.update({k: v for k, v in lap.items() if k in LAPLACE or k.startswith("map_")})
        log(f"  {cache.name} {name}: {len(images)} images ({n} with Laplace) in "
            f"{time.perf_counter() - t0:.0f} s")  # fmt: skip
        return out

    return _cached(cache / f"{name}.npz", settings, compute)


def nll_scores(restored: checkpoint.Restored, cache: Path, name: str, images,
               log) -> dict[str, np.ndarray]:  # fmt: skip
    """{'log_prob': [N]} of `images` under the likelihood model `restored`, cached in
    ``<cache>/<name>.npz`` like `pae_scores`."""
    settings = cache_settings(restored, images)

    def compute():
        lp = evaluate.log_prob(restored.model, images, scale=restored.config.data.scale)
        log(f"  {cache.name} {name}: NLL of {len(images)} images")
        return {"log_prob": lp}

    return _cached(cache / f"{name}.npz", settings, compute)


def fpr_ratio(inlier_outlierness, outlier_outlierness, fnr: float = 0.05) -> float:
    """TPR / FPR at the threshold that misses `fnr` of the outliers (Figure 5's y axis)."""
    threshold = np.quantile(outlier_outlierness, fnr)
    tpr = float(np.mean(outlier_outlierness >= threshold))
    fpr = float(np.mean(inlier_outlierness >= threshold))
    return tpr / fpr if fpr > 0 else float("inf")


FIG5 = {"reconstruction": "(a) reconstruction", "latent_density": "(b) PAE density"}


def figure5(rows: list[dict], path) -> Path:
    """Figure 5: TPR/FPR at 5% FNR against K for scores (a) and (b), log scale.

    One colour per outlier set; (a) solid with circles, (b) dashed with squares. A ratio that
    is infinite (no inlier above the threshold) is left out of its line.

    Args:
      rows: `main`'s rows, or the "rows" of ``pae_ood_<profile>.json``: dicts with "score",
        "k" and "ratio_at_5pct_fnr" ({outlier set: ratio}); other scores are ignored.
      path: output PNG.

    Returns:
      The PNG's path.
    """
    series, styles, colours = {}, {}, {}
    for r in rows:
        if r.get("score") not in FIG5:
            continue
        for s, ratio in r["ratio_at_5pct_fnr"].items():
            name = f"{FIG5[r['score']]}: {s}"
            xs, ys = series.setdefault(name, ([], []))
            xs.append(r["k"])
            ys.append(ratio)
            solid = r["score"] == "reconstruction"
            colour = colours.setdefault(s, f"C{len(colours)}")
            styles[name] = {"color": colour, "linestyle": "-" if solid else "--",
                            "marker": "o" if solid else "s"}  # fmt: skip
    if not series:
        raise ValueError("figure5: no rows with score 'reconstruction' or 'latent_density'")
    return plots.line_chart(
        series, path, log_y=True, size=(760, 420), styles=styles, xlabel="latent dimension K",
        ylabel="TPR / FPR at 5% FNR", title="Figure 5: F-MNIST vs outliers, TPR/FPR at 5% FNR",
    )  # fmt: skip


def roc_figure(curves: dict, path, inliers: str = "Fashion-MNIST") -> Path:
    """ROC curves, one panel per outlier set, against the in-distribution test set.

    Args:
      curves: ``{label: {outlier set: (inlier outlierness [n_in], outlier outlierness [n_out],
        (auc, lo, hi))}}``, outlierness = minus a log-density (higher = more of an outlier).
      path: output PNG.
      inliers: what the in-distribution set is, in the panels' titles.

    Returns:
      The PNG's path.
    """
    sets = list(next(iter(curves.values())))
    panels = {f"{inliers} vs {s}": {label: c[s] for label, c in curves.items()} for s in sets}
    return plots.roc_curves(panels, path, size=(1000, 450 * -(-len(sets) // 2)),
                            title="ROC curves, AUROC [95% bootstrap interval]")  # fmt: skip


def pae_rows(scores: dict, inliers: str, outliers, k: int, n_boot: int) -> list[dict]:
    """One table row per PAE score: its AUROC [95% interval] and TPR/FPR at 5% FNR against each
    outlier set, with the inlier set `inliers` as the negatives (outlierness: minus the score).

    Args:
      scores: {set name: {score: [n]}} (`pae_scores`).
      inliers: the in-distribution set's name; outliers: the outlier sets' names.
      k: the PAE's latent dimension; n_boot: bootstrap replicates of the intervals.
    """
    rows = []
    for score in PAE_SCORES:
        inl = -scores[inliers][score]
        row = {"label": LABELS[score], "score": score, "k": k, "n": len(inl), "auroc": {},
               "ratio_at_5pct_fnr": {}}  # fmt: skip
        for s in outliers:
            outl = -scores[s][score]
            row["auroc"][s] = metrics.auroc_ci(inl, outl, n_boot=n_boot)
            row["ratio_at_5pct_fnr"][s] = fpr_ratio(inl, outl)
        if score in LAPLACE:
            row["map_converged_fraction"] = float(np.mean(scores[inliers]["map_converged"]))
        rows.append(row)
    return rows


def _curves(scores: dict, inliers: str, row: dict) -> dict:
    """A row's ROC curves for `roc_figure`: {outlier set: (inlier, outlier outlierness, CI)}."""
    inl = -scores[inliers][row["score"]]
    return {s: (inl, -scores[s][row["score"]], ci) for s, ci in row["auroc"].items()}


def table(rows: list[dict], sets: list[str], paper: dict = PAPER) -> str:
    """The markdown AUROC table: one column per outlier set, the rows of `paper` first."""
    head = "| score | K | n | " + " | ".join(sets) + " |"
    lines = [head, "|---|---|---|" + "---|" * len(sets)]
    for name, values in paper.items():
        lines.append(f"| {name} | | | " + " | ".join(f"{values.get(s, '')}" for s in sets) + " |")
    for r in rows:
        cells = [f"{r['auroc'][s][0]:.3f} [{r['auroc'][s][1]:.3f}, {r['auroc'][s][2]:.3f}]"
                 if s in r["auroc"] else "" for s in sets]  # fmt: skip
        lines.append(f"| {r['label']} | {r['k']} | {r['n']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def make_parser():
    """The command line (`pae_cli.parser` and this script's flags)."""
    p = pae_cli.parser(__doc__, "runs/pae", module="experiments.pae_ood", seed=False)
    p.add_argument("--ks", default=None, help="comma-separated latent dims (default 4,8,16,32,64)")
    p.add_argument("--run", default=None,
                   help="your own PAE run folder: score its test split against --outlier "
                   "sets")  # fmt: skip
    p.add_argument("--outlier", "--extra", dest="outliers", action="append", default=[],
                   metavar="NAME=SOURCE",
                   help="an outlier set (repeatable): a folder of images, an .npz file, "
                   "tfds:NAME or a built-in name, made the images the model takes")  # fmt: skip
    p.add_argument("--no-baselines", action="store_true", help="PAE scores only")
    p.add_argument("--laplace-n", type=int, default=None,
                   help="images of every set scored by (c) and (d) (default: 100 with --cpu, "
                   "10000 without)")  # fmt: skip
    return p


def main(argv=None) -> dict:
    p = make_parser()
    args = pae_cli.parse(p, argv)
    if args.laplace_n is not None and args.laplace_n < 1:
        p.error(f"--laplace-n must be at least 1, got {args.laplace_n}")
    prof = Profile(args.cpu)
    prof.ks = pae_cli.ks(args.ks, prof.ks)
    prof.laplace_n = args.laplace_n or prof.laplace_n
    if args.run is not None:
        return main_own(p, args, prof)
    trained = {f"k{k}": prof.pae(k) for k in prof.ks}
    if not args.no_baselines:
        trained.update(vae_k32=prof.vae(), vpae_t_diag_k10=prof.vpae())
    # The runs and the data are checked before --out is made: a failed start creates nothing.
    hint = "" if args.no_baselines else " (--no-baselines: the PAE runs k<K> alone)"
    pae_cli.runs_root(args, trained, hint)
    try:
        sets = datasets(args.data_dir, args.outliers)
    except (ValueError, FileNotFoundError, TypeError) as e:
        sys.exit(f"error: {e}")
    outliers = [s for s in sets if s != "fashion_mnist"]
    runs, out, log = pae_cli.start(args, trained, hint)

    # --- Train (or resume) every model it owns; each run folder resumes on its own.
    pae_cli.train(trained, runs, args, log)

    # --- Scores and AUROCs.
    rows, roc = [], {}
    roc_picks = {("reconstruction", min(prof.ks)), ("latent_density", max(prof.ks))}
    for k in prof.ks:
        run = runs / f"k{k}"
        restored = pae_cli.restore(run)
        cache = out / "scores" / run.name
        scores = {s: pae_scores(restored, cache, s, images, prof, log)
                  for s, images in sets.items()}  # fmt: skip
        for row in pae_rows(scores, "fashion_mnist", outliers, k, prof.n_boot):
            rows.append(row)
            if (row["score"], k) in roc_picks:
                roc[f"{FIG5[row['score']]}, K={k}"] = _curves(scores, "fashion_mnist", row)
    if not args.no_baselines:
        for run_name, label, k in (("vae_k32", "VAE negative ELBO", 32),
                                   ("vpae_t_diag_k10", "VPAE t_diag K=10 NLL", 32)):  # fmt: skip
            run = runs / run_name
            restored = pae_cli.restore(run)
            lp = {s: nll_scores(restored, out / "scores" / run_name, s, images, log)["log_prob"]
                  for s, images in sets.items()}  # fmt: skip
            row = {"label": label, "score": run_name, "k": k, "n": len(lp["fashion_mnist"]),
                   "auroc": {s: metrics.auroc_ci(-lp["fashion_mnist"], -lp[s], n_boot=prof.n_boot)
                             for s in outliers}}  # fmt: skip
            rows.append(row)
            roc[label] = {s: (-lp["fashion_mnist"], -lp[s], row["auroc"][s]) for s in outliers}

    # --- Write.
    name = f"pae_ood_{prof.name}"
    md = [
        f"# PAE out-of-distribution detection ({prof.name} configuration)",
        "",
        f"Command: `{args.command}`",
        "",
        "AUROC [95% bootstrap interval], Fashion-MNIST test set (in-distribution) against each "
        f"outlier set; {prof.n_boot} bootstrap replicates. Scores (c) and (d) use the first "
        f"{prof.laplace_n} images of every set (the `n` column) and {prof.map_steps} L-BFGS "
        "steps for the MAP of Eq. 9."
        + (
            ""
            if args.no_baselines
            else " The VPAE baseline's K is its mixture size, 10; it is "
            "listed under K=32 with the VAE (both are one model each, not per K)."
        ),
        "",
        table(rows, outliers),
        "",
        f"Figure 5: `{name}_fig5.png` (TPR/FPR at 5% FNR against K, log scale) and "
        f"`{name}_fig5_recon.png` (8 MNIST test images, then their reconstructions by the AE "
        f"at K = {', '.join(map(str, prof.ks))}, one row each). ROC curves: `{name}_roc.png` "
        f"(per outlier set: (a) at K={min(prof.ks)}, (b) at K={max(prof.ks)}"
        + ("" if args.no_baselines else " and the baselines")
        + ").",
        "",
    ]
    (out / f"{name}.md").write_text("\n".join(md))
    (out / f"{name}.json").write_text(
        json.dumps({"profile": prof.__dict__, "rows": rows}, indent=1)
    )
    recon_rows = [sets["mnist"][:8].astype(np.float32) / 255]
    for k in prof.ks:
        restored = checkpoint.restore_params(runs / f"k{k}")
        fns = evaluate.functions(restored)
        recon_rows.append(np.asarray(fns.reconstruct(recon_rows[0])))
    plots.image_grid(recon_rows, out / f"{name}_fig5_recon.png", scale=2,
                     row_labels=["MNIST test"] + [f"AE, K={k}" for k in prof.ks],
                     title="MNIST test images and their reconstructions by the Fashion-MNIST "
                     "AEs")  # fmt: skip
    figure5(rows, out / f"{name}_fig5.png")
    roc_figure(roc, out / f"{name}_roc.png")
    log(f"wrote {out / name}.md")
    print("\n".join(md))
    return {"rows": rows}


# --- Your own run ------------------------------------------------------------------------------


def own_run(run, data_dir=None) -> tuple[checkpoint.Restored, np.ndarray]:
    """The fitted PAE of a run folder and its test images, split as the run's saved config
    says (`evaluate._run_data`: the data found must be the data it was trained on).

    Raises:
      FileNotFoundError, checkpoint.CheckpointError: no run there, or its stages disagree.
      models.NotFittedError: a run without a fitted latent flow (how to fit it).
      evaluate.TrainingDataError, ValueError: the run's data are not where, or what, they were.
    """
    restored = checkpoint.restore_params(run)
    if not isinstance(restored.model, models.PAE):
        raise models.NotFittedError(
            f"{run} holds a model of kind {restored.spec['kind']!r} without a fitted latent "
            f"flow (no checkpoint in {Path(run) / 'stage2'}), and the OoD scores are the PAE's: "
            f"{models.FIT_FLOW_HINT}"
        )
    fix = "score it where its data are, or pass --data-dir where its built-in or tfds data are"
    return restored, evaluate._run_data(restored, run, data_dir, fix=fix).test.images


def main_own(p, args, prof: Profile) -> dict:
    """--run: the run's test split against each --outlier set (module docstring)."""
    run, out = Path(args.run), Path(args.out)
    clash = [f for f, v in (("--ks", args.ks), ("--runs", args.runs)) if v is not None]
    if clash:
        p.error(f"{', '.join(clash)}: for the Fashion-MNIST runs; --run scores one run")
    if not args.outliers:
        p.error("--run needs at least one --outlier NAME=SOURCE (a folder of images, an .npz "
                "file, tfds:NAME)")  # fmt: skip
    for where in (run, Path(pae_cli.COMMITTED)):
        if out.resolve().is_relative_to(where.resolve()):
            p.error(f"--out {out} is inside {where}: results of your own runs go elsewhere "
                    f"(default {pae_cli.OUT})")  # fmt: skip
    try:
        restored, inliers = own_run(run, args.data_dir)
        dc, shape = restored.config.data, restored.model.image_shape
        sets, sources = {IN: inliers}, {IN: f"test split of {dc.dataset}"}
        for spec in args.outliers:
            name, images = load_outlier(spec, shape, data_dir=args.data_dir,
                                        image_size=dc.image_size,
                                        pad_to_32=dc.pad_to_32)  # fmt: skip
            if name in sets:
                raise ValueError(f"--outlier {name}: a second set of that name (or the run's "
                                 f"own, {IN!r}): name each NAME=SOURCE apart")  # fmt: skip
            sets[name], sources[name] = images, outlier_source(spec)[1]
    except (ValueError, TypeError, FileNotFoundError, RuntimeError) as e:  # NotFitted, ckpt
        sys.exit(f"error: {e}")
    out.mkdir(parents=True, exist_ok=True)
    log, k, tag = pae_cli.timed_log(), restored.model.latent_dim, f"pae_ood_{run.resolve().name}"
    scores = {s: pae_scores(restored, out / "scores" / run.resolve().name, s, images, prof, log)
              for s, images in sets.items()}  # fmt: skip
    outliers = [s for s in sets if s != IN]
    rows = pae_rows(scores, IN, outliers, k, prof.n_boot)
    h, w, c = shape
    md = [
        f"# PAE out-of-distribution detection: `{run}`",
        "",
        f"Command: `{args.command}`",
        "",
        f"AUROC [95% bootstrap interval, {prof.n_boot} replicates] of each score, the run's "
        f"test split of `{dc.dataset}` ({len(inliers)} images) against each outlier set, all "
        f"as the model takes them ({h} x {w} x {c}); K={k}. Scores (c) and (d) use the first "
        f"{prof.laplace_n} images of every set (the `n` column) and {prof.map_steps} L-BFGS "
        "steps for the MAP of Eq. 9.",
        "",
        table(rows, outliers, paper={}),
        "",
        "Outlier sets: "
        + "; ".join(f"{s}: `{sources[s]}`, {len(sets[s])} images" for s in outliers)
        + f". ROC curves of (a) and (b): `{tag}_roc.png`.",
        "",
    ]
    (out / f"{tag}.md").write_text("\n".join(md))
    record = {"run": str(run), "profile": prof.__dict__, "sources": sources,
              "images": {s: len(x) for s, x in sets.items()}, "rows": rows}  # fmt: skip
    (out / f"{tag}.json").write_text(json.dumps(record, indent=1))
    roc = {f"{FIG5[r['score']]}, K={k}": _curves(scores, IN, r) for r in rows if r["score"] in FIG5}
    roc_figure(roc, out / f"{tag}_roc.png", inliers=f"{Path(dc.dataset).name} test")
    log(f"wrote {out / tag}.md")
    print("\n".join(md))
    return {"rows": rows, "out": out / f"{tag}.md"}


if __name__ == "__main__":
    main()
