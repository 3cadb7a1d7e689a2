"""experiments/regularized_table.py end to end in its --tiny profile, on tiny synthetic data
with a stand-in for Inception: it trains the rows it owns, writes the table, the JSON and the
figures, reads every cell back from its cache on a rerun (no training, nothing computed), and
recomputes only the cells a changed setting touches. Plus the VPAE head's choice, the
published numbers' wiring, and the latent plots it draws with."""

import csv
import json
import shutil

import numpy as np
import pytest
from PIL import Image

from experiments import regularized_table as rt
from experiments import train as etrain
from jaxae import checkpoint, inception, metrics, plots
from jaxae import data as jdata

N_TRAIN, N_TEST = 300, 96


def _split(n: int, seed: int) -> jdata.Split:
    """n 28 x 28 images of 10 classes: a bright square whose place depends on the label."""
    rng = np.random.default_rng(seed)
    labels = (np.arange(n) % 10).astype(np.int32)
    images = rng.integers(0, 40, (n, 28, 28, 1)).astype(np.uint8)
    for i, y in enumerate(labels):
        r, c = 4 + 2 * (y // 5) * 5, 4 + 4 * (y % 5)
        images[i, r : r + 8, c : c + 6] = 220
    return jdata.Split(images, labels, ())


FEATURES = 16  # the fake Inception's: a 2048 x 2048 FID alone takes seconds on CPU
_PROJECTION = np.random.default_rng(0).standard_normal((32 * 32, FEATURES)) / 32


def _fake_features(images, **kwargs):
    """A stand-in for the Inception network: a fixed random projection of the 32 x 32 pixels."""
    x = np.asarray(images, np.float32)
    x = x / 255.0 if np.asarray(images).dtype == np.uint8 else x
    assert x.shape[1:3] == (32, 32), "every FID is of 32 x 32 images"
    return np.tanh(x.reshape(len(x), -1) @ _PROJECTION).astype(np.float32)


@pytest.fixture
def synthetic(monkeypatch, tmp_path):
    """Synthetic MNIST, the fake Inception, a private feature cache, and the rows' configs on a
    small dense network (what is tested is the table's machinery; `--tiny` keeps the papers'
    dcgan, whose compilation alone takes most of a minute here); counts the trainings."""
    splits = {"train": _split(N_TRAIN, 0), "test": _split(N_TEST, 1)}
    monkeypatch.setattr(jdata, "load_raw", lambda name, split, *a, **k: splits[split])
    monkeypatch.setattr(inception, "features", _fake_features)
    monkeypatch.setattr(inception, "FEATURES", FEATURES)
    monkeypatch.setenv("JAXAE_CACHE_DIR", str(tmp_path / "cache"))
    row_config = rt.row_config

    def small(row, dataset, profile):
        c = row_config(row, dataset, profile)
        c.model.update(arch="dense", width=16)
        if row == "gmmdae":  # the prior batches that set its term weights: 2, not 100
            c.gmmdae.weight_batches = 2
        return c

    monkeypatch.setattr(rt, "row_config", small)
    trained = []
    real = etrain.train_and_evaluate

    def counting(config, workdir, **kwargs):
        trained.append(str(workdir))
        return real(config, workdir, **kwargs)

    monkeypatch.setattr(etrain, "train_and_evaluate", counting)
    return tmp_path, trained


def test_tiny_table_trains_caches_and_recomputes_only_what_changed(synthetic):
    tmp, trained = synthetic
    argv = ["--tiny", "--datasets", "mnist", "--samplers", "prior,gaussian,gmm", "--samples",
            "32", "--runs", str(tmp / "runs"), "--out", str(tmp / "out")]  # fmt: skip
    first = rt.main(argv)
    out = tmp / "out"
    assert sorted(trained) == sorted(str(tmp / "runs" / f"mnist-{r}-tiny") for r in rt.TINY_ROWS)
    cells = {f"mnist/{r}/{c}" for r in rt.TINY_ROWS for c in ("model", "prior", "gaussian", "gmm")}
    assert set(first["computed"]) == cells
    rows = first["mnist"]
    gmm_dae, wae = rows["gmmdae"]["model"], rows["wae"]["model"]
    for res in rows.values():
        assert 0 < res["model"]["mse"] < 0.5 and res["model"]["mse_images"] == N_TEST
        for name in ("prior", "gaussian", "gmm"):
            s = res["samplers"][name]
            assert s["fid"] >= 0 and 0 <= s["precision"] <= 1 and s["num_images"] == 32
    assert 0 <= gmm_dae["nmi"] <= 1 and 0 <= gmm_dae["map"] <= 1
    assert wae["active_dims"] == wae["latent_dim"] == 16 and 0 <= wae["nac"] <= 1
    # the sampler was fitted into the run folder, on its checkpoint
    assert (tmp / "runs" / "mnist-wae-tiny" / "samplers" / "gmm" / "fitted_on.json").is_file()

    md = (out / "regularized_mnist_tiny.md").read_text()
    assert "| GMM-DAE | prior |" in md and "13.11 ± 0.9 (GMM-DAE A.2.3)" in md
    assert "| NMI |" in md and "| 0.72 |" in md  # appendix Table 5 beside ours
    assert "115.0 (slides T1)" in md  # WAE-MMD's published FID
    assert "may differ from ours" in md and "not comparable" in md  # protocols; 32 samples
    assert "training.max_steps 3 (paper 0)" in md  # the profile's departures
    assert f"Command: `python -m experiments.regularized_table {' '.join(argv)}`" in md
    saved = json.loads((out / "regularized_mnist_tiny.json").read_text())
    assert saved["samples"] == 32 and set(saved["rows"]) == set(rt.TINY_ROWS)
    assert (
        saved["rows"]["gmmdae"]["samplers"]["gmm"]["fid"]
        == rows["gmmdae"]["samplers"]["gmm"]["fid"]
    )
    for row in rt.TINY_ROWS:
        for fig in ("samples", "latent"):
            png = out / "figures" / f"mnist_tiny-{row}-{fig}.png"
            assert Image.open(png).size[0] > 100

    # a rerun: nothing trained, every cell read back, the same numbers
    trained.clear()
    again = rt.main(argv)
    assert trained == [] and again["trained"] == [] and again["computed"] == []
    assert again["mnist"]["wae"]["samplers"] == rows["wae"]["samplers"]

    # another seed changes the sampler cells only: the model metrics stay cached
    other = rt.main([*argv, "--seed", "1", "--rows", "gmmdae"])
    assert trained == [] and set(other["computed"]) == {
        "mnist/gmmdae/prior", "mnist/gmmdae/gaussian", "mnist/gmmdae/gmm"
    }  # fmt: skip

    # a run folder trained with other settings (here: the WAE's) is left untouched
    runs = tmp / "runs"
    shutil.rmtree(runs / "mnist-gmmdae-tiny")
    shutil.copytree(runs / "mnist-wae-tiny", runs / "mnist-gmmdae-tiny")
    with pytest.raises(SystemExit, match=r"left untouched: .*model.kind: 'wae' \(run\)"):
        rt.main([*argv, "--rows", "gmmdae"])
    assert trained == []


def test_best_vpae_head_is_the_lowest_mlp_l2_first_of_ties(tmp_path):
    rows = [("mlp", "mse", 1, "ok", "1.6"), ("cnn", "matrix_normal_identity", 1, "ok", "0.5"),
            ("mlp", "t_full", 10, "rejected: memory", ""), ("mlp", "normal_identity", 10, "ok",
            "1.194"), ("mlp", "matrix_normal_identity", 10, "ok", "1.194")]  # fmt: skip
    with open(tmp_path / "vpae_mnist.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["dataset", "arch", "head", "K", "status", "L2", "paper_L2"])
        w.writerows([("mnist", *r, "1.163") for r in rows])
    best = rt.best_vpae_head("mnist", tmp_path)
    assert best == {"head": "normal_identity", "K": 10, "L2": 1.194, "paper_L2": 1.163}
    with pytest.raises(FileNotFoundError, match="vpae_fashion_mnist.csv"):
        rt.best_vpae_head("fashion_mnist", tmp_path)


def test_every_published_match_names_a_published_value():
    for matches in [*rt.SAMPLE_MATCHES.values(), *rt.RECON_MATCHES.values()]:
        for source, model in matches:
            assert rt.PUBLISHED[source]["values"][model]  # a KeyError names a broken link
    assert set(r for r, _ in rt.SAMPLE_MATCHES) <= set(rt.ROWS)
    # a few numbers as the papers print them
    assert rt.PUBLISHED["slides_t1"]["values"]["MAAE"] == {"mnist": 10.5, "fashion_mnist": 28.4}
    assert rt.PUBLISHED["slides_t3"]["values"]["FlexAE"]["mnist"] == (4.33, 4.69)
    assert rt._published_samples("fashion_mnist", "gmmdae", "gmm") == {
        "published FID": "26.62 ± 0.8 (GMM-DAE A.2.3)"
    }


def test_bad_options_name_the_choices(capsys):
    for argv, text in ((["--rows", "gmmdae,nope"], "--rows: unknown nope"),
                       (["--cpu", "--tiny"], "choose one"),
                       (["--samples", "2"], "at least 4")):  # fmt: skip
        with pytest.raises(SystemExit):
            rt.parse_args(argv)
        assert text in capsys.readouterr().err


def test_latent_plots(tmp_path):
    rng = np.random.default_rng(0)
    codes, labels = rng.normal(size=(300, 5)), rng.integers(0, 10, 300)
    codes[0] = np.nan  # a diverged code is left out, not an error
    path = plots.latent_pairs(codes, labels, tmp_path / "pairs.png", dims=[0, 3, 4],
                              reference=rng.normal(size=(100, 5)), panel=100)  # fmt: skip
    assert Image.open(path).size == (3 * 100 + 20, 3 * 100 + 20)
    with pytest.raises(ValueError, match=r"dims must be indices in \[0, 5\)"):
        plots.latent_pairs(codes, labels, tmp_path / "bad.png", dims=[5])
    with pytest.raises(ValueError, match="labels \\[N\\]"):
        plots.latent_pairs(codes, labels[:10], tmp_path / "bad.png")
    two = {"cov": {"epoch 1": (codes[:, :2], labels), "epoch 9": (codes[:, 2:4], labels)}}
    path = plots.latent_panels(two, tmp_path / "panels.png", reference=codes[:50, :2], panel=120)
    assert Image.open(path).size == (2 * 120 + 40, 120 + 50)
    with pytest.raises(ValueError, match="must be 2-D"):
        plots.latent_panels({"a": {"b": (codes, labels)}}, tmp_path / "bad.png")


def test_tiny_ablation_draws_each_loss_after_the_first_and_last_epoch(synthetic, monkeypatch):
    tmp, _ = synthetic
    ablation_config = rt.ablation_config

    def small(loss, profile):  # a dense network, batches of 16 of the 60 synthetic 1s and 8s
        c = ablation_config(loss, profile)
        c.model.update(arch="dense", width=16)
        c.training.batch_size = 16
        c.gmmdae.weight_batches = 2
        return c

    monkeypatch.setattr(rt, "ablation_config", small)
    argv = ["--tiny", "--ablation", "--runs", str(tmp / "runs"), "--out", str(tmp / "out")]
    result = rt.main(argv)
    assert len(result["trained"]) == 3
    assert set(result["ablation"]["runs"]) == {"cov", "ks", "both"}
    nmi = result["ablation"]["nmi"]
    assert set(nmi) == {f"{what} after {e}" for what in rt.ABLATION_LOSSES.values()
                        for e in ("1 epoch", "2 epochs")}  # fmt: skip
    assert all(0 <= v <= 1 for v in nmi.values())
    png = tmp / "out" / "figures" / "gmmdae_ablation_tiny.png"
    assert Image.open(png).size[1] > 3 * 200  # three rows of panels
    md = (tmp / "out" / "gmmdae_ablation_tiny.md").read_text()
    assert "| covariance term only |" in md and "(3, 3) and (-3, -3)" in md
    # the restored model has the ablation's prior, from its saved description
    model = checkpoint.restore_params(result["ablation"]["runs"]["both"]).model
    np.testing.assert_array_equal(np.asarray(model.prior.means), rt.ABLATION_MEANS)
    assert rt.main(argv)["trained"] == []  # finished: nothing trained again


def test_kid_of_two_whole_sets_is_one_subset():
    """n samples against n test images (n <= the subset size): each of KID's subset pairs is
    both whole sets permuted, and the unbiased MMD^2 ignores order, so one computation is the
    average of the hundred (what the table's 1,000 against 1,000 costs)."""
    rng = np.random.default_rng(3)
    feats, ref = rng.normal(size=(60, 8)), rng.normal(0.3, 1.0, size=(60, 8))
    mean, std = metrics.kid(feats, ref)
    shuffled = [metrics.polynomial_mmd2(feats[rng.permutation(60)], ref[rng.permutation(60)])
                for _ in range(3)]  # fmt: skip
    np.testing.assert_allclose(shuffled, mean, rtol=1e-9)
    assert std == 0.0 and mean > 0.01
    mean50, std50 = metrics.kid(feats[:50], ref)  # sets of two sizes: random subsets of 50
    assert std50 > 0
