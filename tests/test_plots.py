"""jaxae.plots: charts through matplotlib, labelled image grids, a run's training curves and
their command line; metrics.roc_curve; the PAE OoD script's Figure 5 and ROC figure."""

import json
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

from experiments import pae_ood
from jaxae import metrics, plots


def _png(path):
    img = Image.open(path)
    return img.size, img.mode


# ----------------------------------------------------------------------------------------------
# metrics.roc_curve


def test_roc_curve_hand_computed_with_a_tie():
    inl = [0.1, 0.4, 0.4, 0.8]
    outl = [0.4, 0.9, 0.6]
    fpr, tpr = metrics.roc_curve(inl, outl)
    # thresholds 0.9, 0.8, 0.6, 0.4 (one outlier and two inliers tie: a diagonal step), 0.1
    np.testing.assert_allclose(fpr, [0, 0, 1 / 4, 1 / 4, 3 / 4, 1])
    np.testing.assert_allclose(tpr, [0, 1 / 3, 1 / 3, 2 / 3, 1, 1])
    # pairs won: 0.4 -> 1 + 2 halves, 0.9 -> 4, 0.6 -> 3: 9 of 12
    assert np.trapezoid(tpr, fpr) == pytest.approx(0.75)
    assert metrics.auroc(inl, outl) == pytest.approx(0.75)


def test_roc_curve_area_is_auroc_with_many_ties():
    rng = np.random.default_rng(0)
    inl, outl = rng.integers(0, 6, 300).astype(float), rng.integers(2, 9, 200).astype(float)
    fpr, tpr = metrics.roc_curve(inl, outl)
    assert fpr[0] == tpr[0] == 0 and fpr[-1] == tpr[-1] == 1
    assert (np.diff(fpr) >= 0).all() and (np.diff(tpr) >= 0).all()
    assert len(fpr) == len(np.unique(np.concatenate([inl, outl]))) + 1
    np.testing.assert_allclose(np.trapezoid(tpr, fpr), metrics.auroc(inl, outl), rtol=1e-12)


def test_roc_curve_rejects_nan_scores():
    with pytest.raises(ValueError, match="outlier_scores: 1 NaN"):
        metrics.roc_curve([0.0, 1.0], [np.nan, 2.0])


# ----------------------------------------------------------------------------------------------
# Charts


def test_line_chart_size_mode_and_styles(tmp_path):
    series = {"a": ([4, 8, 16], [1.0, 10.0, np.inf]), "b": ([4, 16], [2.0, 3.0])}
    path = plots.line_chart(series, tmp_path / "c.png", log_y=True, xlabel="K", size=(600, 300),
                            styles={"b": {"color": "k", "linestyle": "--"}})  # fmt: skip
    assert _png(path) == ((600, 300), "RGB")
    img = np.asarray(Image.open(path))
    assert ((img == 0).all(-1)).any()  # the black dashed line of "b" is drawn
    with pytest.raises(ValueError, match="'a' has 2 xs and 1 ys"):
        plots.line_chart({"a": ([1, 2], [1.0])}, tmp_path / "d.png")
    with pytest.raises(ValueError, match="log_y needs y > 0"):
        plots.line_chart({"a": ([1], [0.0])}, tmp_path / "d.png", log_y=True)


def test_roc_curves_one_panel_and_several(tmp_path):
    rng = np.random.default_rng(0)
    inl = rng.normal(size=200)
    one = {"score": (inl, rng.normal(1.0, size=100)), "given CI": (inl, inl + 1, (0.9, 0.8, 1.0))}
    assert _png(plots.roc_curves(one, tmp_path / "a.png", n_boot=20)) == ((440, 400), "RGB")
    panels = {s: {"score": (inl, rng.normal(m, size=50))} for m, s in enumerate("xyz")}
    path = plots.roc_curves(panels, tmp_path / "b.png", n_boot=20, title="t")
    assert _png(path) == ((880, 824), "RGB")  # 2 x 2 panels, the last one removed, a title
    with pytest.raises(ValueError, match="nothing to draw"):
        plots.roc_curves({"x": {}}, tmp_path / "c.png")


def _write_log(path, lines):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))


def _fake_run(root):
    """A two-stage run: an AE logging loss/mse (eval each epoch), a flow logging nll = loss."""
    run = root / "run"
    ae = []
    for s in range(1, 7):
        line = {"step": 5 * s, "epoch": s / 2, "loss": 10.0 / s, "mse": 0.1 / s, "seconds": 0.1}
        if s % 2 == 0:
            line.update(eval_loss=11.0 / s, eval_mse=0.11 / s)
        ae.append(line)
    # as jaxae.train.grouped logs it: the flow group's terms under "flow/"
    flow = [{"step": e, "epoch": float(e), "loss": -e, "flow/nll": -e, "eval_loss": 1 - e,
             "eval_nll": 1 - e, "best_epoch": min(e, 3)} for e in range(1, 6)]  # fmt: skip
    _write_log(run / "metrics.jsonl", ae)
    _write_log(run / "stage2" / "metrics.jsonl", flow)
    (run / "stage2" / "checkpoints").mkdir()
    return run, flow


def test_training_curves_draws_every_stage(tmp_path):
    run, flow = _fake_run(tmp_path)
    path = plots.training_curves(run)
    assert path == run / "curves.png"
    # rows: the AE (loss, mse panels), the flow (one panel: its nll is its loss)
    assert _png(path) == ((800, 630), "RGB")
    assert plots._curve_panels(flow) == [("nll (= loss)", "nll")]
    # a later stage that logs before its first checkpoint counts too: a third row
    _write_log(run / "stage3" / "metrics.jsonl", flow)
    assert _png(plots.training_curves(run, tmp_path / "x.png")) == ((800, 930), "RGB")


@pytest.mark.parametrize(
    "text, match",
    [
        ("", "empty log"),
        ('{"epoch": 1, "loss": 1}\n\n{"epoch": 2, "loss": 1}\n', r"line 2: empty line"),
        ('{"epoch": 1, "loss": 1}\n{"epoch": 2, "lo', r"line 2: not JSON"),
        ('{"epoch": 1, "loss": 1}\n[1, 2]\n', r"line 2: expected a JSON object"),
        ('{"epoch": 1, "examples_per_s": 1}\n', "nothing to draw"),
    ],
)
def test_training_curves_names_the_bad_log_line(tmp_path, text, match):
    run, _ = _fake_run(tmp_path)
    (run / "stage2" / "metrics.jsonl").write_text(text)
    with pytest.raises(ValueError, match=match) as e:
        plots.training_curves(run)
    assert "stage2/metrics.jsonl" in str(e.value)


def test_training_curves_missing_folder_or_log(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such run folder"):
        plots.training_curves(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="metrics.jsonl: no metrics log"):
        plots.training_curves(tmp_path)


def test_cli_draws_curves_and_exits_2_on_a_bad_run(tmp_path, capsys):
    run, _ = _fake_run(tmp_path)
    assert plots.main([str(run), "--out", str(tmp_path / "c.png")]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "c.png")
    assert (tmp_path / "c.png").is_file()
    # the module's own entry point: one line on stderr, exit status 2
    r = subprocess.run([sys.executable, "-m", "jaxae.plots", str(tmp_path / "nope")],
                       capture_output=True, text=True, timeout=60)  # fmt: skip
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.startswith("error: ") and r.stderr.count("\n") == 1


# ----------------------------------------------------------------------------------------------
# Image grids


def test_image_grid_labels_make_room_and_modes(tmp_path):
    rows = [np.full((3, 8, 8), 0.2), np.full((2, 8, 8, 1), 0.8)]
    plain = plots.image_grid(rows, tmp_path / "a.png")
    (w0, h0), mode = _png(plain)
    assert mode == "L" and (w0, h0) == (3 * 20 + 4, 2 * 20 + 4)  # 16-px tiles, 4-px gaps
    labelled = plots.image_grid(rows, tmp_path / "b.png", row_labels=["MNIST test", "K=4"])
    assert _png(labelled)[0][0] > w0 + 40 and _png(labelled)[0][1] == h0
    cols = plots.image_grid(rows, tmp_path / "c.png", col_labels=["input", "MAP", "a sample"])
    (w, h), _ = _png(cols)
    assert h > h0 + 10 and w > w0  # "a sample" is wider than a 16-px tile: its column widens
    titled = plots.image_grid(rows, tmp_path / "d.png", title="a long title for two tiny rows")
    assert _png(titled)[0][0] > w0 and _png(titled)[0][1] > h0
    # the row label is drawn in black left of the tiles; the plain grid has no black at all
    assert np.asarray(Image.open(labelled)).min() < 50 < np.asarray(Image.open(plain)).min()
    rgb = plots.image_grid([np.ones((2, 8, 8, 3)) * [1, 0, 0], rows[0]], tmp_path / "e.png",
                           captions=[["x", "y"], ["", "z", ""]])  # fmt: skip
    assert _png(rgb)[1] == "RGB" and _png(rgb)[0][1] > h0
    assert tuple(np.asarray(Image.open(rgb))[6, 6]) == (255, 0, 0)  # the red tile


def test_image_grid_100_labelled_tiles_under_a_second(tmp_path):
    rows = [np.random.default_rng(r).uniform(size=(10, 28, 28, 1)) for r in range(10)]
    t0 = time.perf_counter()
    plots.image_grid(rows, tmp_path / "g.png", row_labels=[f"K={k}" for k in range(10)],
                     col_labels=[f"sample {i}" for i in range(10)], title="t")  # fmt: skip
    assert time.perf_counter() - t0 < 1.0


def test_image_grid_rejects_bad_input(tmp_path):
    with pytest.raises(ValueError, match="needs the size"):
        plots.image_grid([np.zeros((2, 8, 8)), np.zeros((2, 9, 8))], tmp_path / "a.png")
    with pytest.raises(ValueError, match="3 row labels for 1 rows"):
        plots.image_grid([np.zeros((2, 8, 8))], tmp_path / "a.png", row_labels=["a", "b", "c"])
    with pytest.raises(ValueError, match=r"row 0 has shape \(2, 8, 8, 2\)"):
        plots.image_grid([np.zeros((2, 8, 8, 2))], tmp_path / "a.png")


# ----------------------------------------------------------------------------------------------
# The OoD script's figures


def test_pae_ood_figure5_reads_the_json_rows(tmp_path):
    rows = [
        {"score": s, "k": k, "ratio_at_5pct_fnr": {"mnist": r * k, "hflip": float("inf")}}
        for k in (4, 8)
        for s, r in (("reconstruction", 1.0), ("latent_density", 2.0), ("eq12", 3.0))
    ] + [{"score": "vae_k32", "k": 32, "auroc": {}}]  # baselines have no ratio
    rows = json.loads(json.dumps(rows))  # as read back from pae_ood_<profile>.json
    assert _png(pae_ood.figure5(rows, tmp_path / "f.png")) == ((760, 420), "RGB")
    with pytest.raises(ValueError, match="no rows with score"):
        pae_ood.figure5(rows[2:3], tmp_path / "g.png")


def test_pae_ood_roc_figure_one_panel_per_outlier_set(tmp_path):
    rng = np.random.default_rng(0)
    inl = rng.normal(size=100)
    curves = {label: {s: (inl, rng.normal(1, size=100), (0.7, 0.6, 0.8)) for s in ("a", "b")}
              for label in ("(a) reconstruction, K=4", "VAE negative ELBO")}  # fmt: skip
    assert _png(pae_ood.roc_figure(curves, tmp_path / "r.png")) == ((1000, 450), "RGB")
