"""The Table 1 script end to end on a tiny grid: table, paper values beside ours, figures."""

import csv

import numpy as np

from experiments import vpae_table


def test_tiny_grid_writes_tables_and_figures(tmp_path, monkeypatch):
    argv = [
        "--datasets", "fashion_mnist", "--archs", "mlp", "--heads", "t_diag,matrix_t_identity",
        "--ks", "1,2", "--epochs", "2", "--train-examples", "512", "--eval-images", "64",
        "--nll-images", "64", "--out", str(tmp_path / "out"), "--runs", str(tmp_path / "runs"),
        "--no-progress",
    ]  # fmt: skip
    rows = vpae_table.main(argv)
    assert {(r["head"], r["K"]) for r in rows} == {
        ("t_diag", 1), ("t_diag", 2), ("matrix_t_identity", 1), ("matrix_t_identity", 2),
    }  # fmt: skip
    table = list(csv.DictReader(open(tmp_path / "out" / "vpae_fashion_mnist.csv")))
    t_diag = next(r for r in table if r["head"] == "t_diag" and r["K"] == "1")
    assert t_diag["status"] == "ok"
    assert t_diag["params"] == t_diag["paper_params"] == "76930"
    assert t_diag["paper_L2"] == "3.26"  # the paper's F-MNIST value stands beside ours
    assert float(t_diag["L2"]) > 0 and float(t_diag["s_per_epoch"]) > 0
    assert float(t_diag["test_nll_nats"]) == float(t_diag["test_nll_nats"])  # not nan
    md = (tmp_path / "out" / "vpae_fashion_mnist.md").read_text()
    assert "| mlp | t_diag | 1 | 76930 | 76930 |" in md
    figures = {p.name for p in (tmp_path / "out" / "figures").iterdir()}
    assert "fashion_mnist-mlp-t_diag-k1-recon.png" in figures
    assert "fashion_mnist-mlp-t_diag-k2-components.png" in figures
    assert "fashion_mnist-mlp-matrix_t_identity-k1-samples.png" in figures
    # a second call finds every row done and trains nothing
    again = vpae_table.main(argv)
    md = (tmp_path / "out" / "vpae_fashion_mnist.md").read_text()
    assert [r["L2"] for r in again] == [r["L2"] for r in table]
    # --redraw draws the figures again from the runs' checkpoints, training nothing
    for f in (tmp_path / "out" / "figures").iterdir():
        f.unlink()
    vpae_table.main([*argv, "--redraw"])
    assert {p.name for p in (tmp_path / "out" / "figures").iterdir()} == figures
    assert (tmp_path / "out" / "vpae_fashion_mnist.md").read_text() == md  # tables untouched

    # FID columns for the finished rows, by jaxae.evaluate (a quick protocol, stated)
    monkeypatch.setenv("JAXAE_CACHE_DIR", str(tmp_path / "cache"))
    scored = vpae_table.main([*argv[:6], "--ks", "1", *argv[8:], "--fid-samples", "8"])
    assert {r["fid_images"] for r in scored if r["K"] in (1, "1")} == {8}
    t_diag = next(r for r in scored if r["head"] == "t_diag" and r["K"] in (1, "1"))
    assert t_diag["fid_recon"] > 0 and t_diag["fid_prior"] > 0 and t_diag["fid_gaussian"] > 0
    md = (tmp_path / "out" / "vpae_fashion_mnist.md").read_text()
    assert "FID protocol:" in md and "not comparable" in md


def test_two_grid_processes_share_one_results_file(tmp_path):
    """Each process rereads the file before writing: neither drops the other's finished rows."""
    args = vpae_table.argparse.Namespace(command_line="", epochs=20, batch_size=128)

    def row(head, l2):
        return {"dataset": "mnist", "arch": "mlp", "head": head, "K": 1, "status": "ok",
                "L2": l2, "eval_images": 1000}  # fmt: skip

    mlp = {("mnist", "mlp", "mse", 1): row("mse", 1.6)}
    cnn = {("mnist", "cnn", "matrix_normal_identity", 1): row("matrix_normal_identity", 1.7)}
    cnn[("mnist", "cnn", "matrix_normal_identity", 1)]["arch"] = "cnn"
    vpae_table.save_rows(mlp, tmp_path, "mnist", args)  # both started from an empty file
    merged = vpae_table.save_rows(cnn, tmp_path, "mnist", args)
    assert set(merged) == set(mlp) | set(cnn)
    assert set(vpae_table.read_rows(tmp_path, "mnist")) == set(mlp) | set(cnn)
    mlp[("mnist", "mlp", "mse", 1)]["L2"] = 1.5  # a process's newer row replaces its old one
    vpae_table.save_rows(mlp, tmp_path, "mnist", args)
    table = vpae_table.read_rows(tmp_path, "mnist")
    assert table[("mnist", "mlp", "mse", 1)]["L2"] == "1.5" and len(table) == 2
    md = (tmp_path / "vpae_mnist.md").read_text()
    assert "| cnn | matrix_normal_identity | 1 |" in md
    k10 = {**row("normal_identity", 1.1), "K": 10}  # written last, listed in the papers' order
    vpae_table.save_rows({("mnist", "mlp", "normal_identity", 10): k10}, tmp_path, "mnist", args)
    order = [(r["arch"], r["K"]) for r in vpae_table.read_rows(tmp_path, "mnist").values()]
    assert order == [("mlp", "1"), ("mlp", "10"), ("cnn", "1")]


def test_variance_panel_scales_each_image_and_names_undefined_ones():
    var = np.zeros((3, 2, 2, 1))
    var[0] = [[[0.1], [0.5]], [[0.2], [0.0]]]
    var[1, 0, 0, 0] = np.nan  # a head without a variance
    var[2, 1, 1, 0] = np.inf  # a t head with 1 < df <= 2
    images, captions = vpae_table.variance_panel(var)
    np.testing.assert_allclose(images[0].ravel(), [0.2, 1.0, 0.4, 0.0])
    assert captions == ["max 0.5", "undefined", "undefined"]
    assert np.all(images[1:] == 0)
