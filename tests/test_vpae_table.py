"""The Table 1 script end to end on a tiny grid: table, paper values beside ours, figures."""

import csv
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from experiments import vpae_table

sys.path.insert(0, str(Path(__file__).parent))
import _child  # noqa: E402

RESULTS = Path(__file__).resolve().parents[1] / "experiments" / "results"
MNIST_SIZES = vpae_table.Sizes(train=60000, test=10000)


def _tiny_argv(folder: Path) -> list[str]:
    return [
        "--datasets", "fashion_mnist", "--archs", "mlp", "--heads", "t_diag",
        "--ks", "1,2", "--epochs", "2", "--train-examples", "512", "--eval-images", "64",
        "--nll-images", "64", "--out", str(folder / "out"), "--runs", str(folder / "runs"),
        "--no-progress",
    ]  # fmt: skip


def build_tiny_grid(folder: Path) -> None:
    """The tiny grid's first call (it trains every row), in `folder`."""
    vpae_table.main(_tiny_argv(folder))


# the first call trains: in a child process, in the background while other tests go on
BACKGROUND = {"test_tiny_grid_writes_tables_and_figures":
              lambda: _child.build(__file__, "build_tiny_grid")}  # fmt: skip


def test_tiny_grid_writes_tables_and_figures(monkeypatch):
    tmp_path = _child.result(__file__, "test_tiny_grid_writes_tables_and_figures", BACKGROUND)
    argv = _tiny_argv(tmp_path)
    table = list(csv.DictReader(open(tmp_path / "out" / "vpae_fashion_mnist.csv")))
    assert {(r["head"], r["K"]) for r in table} == {("t_diag", "1"), ("t_diag", "2")}
    t_diag = next(r for r in table if r["head"] == "t_diag" and r["K"] == "1")
    assert t_diag["status"] == "ok"
    assert t_diag["params"] == t_diag["paper_params"] == "76930"
    assert t_diag["paper_L2"] == "3.26"  # the paper's F-MNIST value stands beside ours
    assert float(t_diag["L2"]) > 0 and float(t_diag["s_per_epoch"]) > 0
    assert float(t_diag["test_nll_nats"]) == float(t_diag["test_nll_nats"])  # not nan
    settings = {k: t_diag[k] for k in vpae_table.SETTINGS}
    assert settings == {
        "epochs": "2",
        "batch_size": "128",
        "first_seed": "0",
        "train_examples": "512",
        "eval_images": "64",
        "nll_images": "64",
    }
    md = (tmp_path / "out" / "vpae_fashion_mnist.md").read_text()
    assert "| mlp | t_diag | 1 | 76930 | 76930 |" in md
    assert "Ours: 2 epochs, batch 128" in md
    # not the paper's training settings: the run folders and figures say which
    runs = {p.name for p in (tmp_path / "runs").iterdir()}
    assert "fashion_mnist-mlp-t_diag-k1-s0-e2-n512" in runs
    figures = {p.name for p in (tmp_path / "out" / "figures").iterdir()}
    assert "fashion_mnist-mlp-t_diag-k1-e2-n512-recon.png" in figures
    assert "fashion_mnist-mlp-t_diag-k2-e2-n512-components.png" in figures
    assert "fashion_mnist-mlp-t_diag-k1-e2-n512-samples.png" in figures
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
    scored = vpae_table.main([*argv[:4], "--heads", "t_diag", "--ks", "1", *argv[8:],
                              "--fid-samples", "8"])  # fmt: skip
    assert [r["fid_images"] for r in scored if r["head"] == "t_diag" and r["K"] in (1, "1")] == [8]
    t_diag = next(r for r in scored if r["head"] == "t_diag" and r["K"] in (1, "1"))
    assert t_diag["fid_recon"] > 0 and t_diag["fid_prior"] > 0 and t_diag["fid_gaussian"] > 0
    md = (tmp_path / "out" / "vpae_fashion_mnist.md").read_text()
    assert "FID protocol:" in md and "not comparable" in md

    # The user's bug: `--epochs 1` after a longer run trained nothing (rows were keyed by the
    # cell only) or resumed the longer run's folder. Now it is a row and a run of its own.
    one = vpae_table.main([*argv[:4], "--heads", "t_diag", "--ks", "1", *argv[8:], "--epochs", "1"])
    t_diag_rows = [r for r in one if r["head"] == "t_diag" and str(r["K"]) == "1"]
    assert sorted(int(r["epochs"]) for r in t_diag_rows) == [1, 2]
    assert (tmp_path / "runs" / "fashion_mnist-mlp-t_diag-k1-s0-e1-n512").is_dir()
    table = list(csv.DictReader(open(tmp_path / "out" / "vpae_fashion_mnist.csv")))
    assert len(table) == 3 and all(r["status"] == "ok" for r in table)
    md = (tmp_path / "out" / "vpae_fashion_mnist.md").read_text()
    assert "| arch | head | K | epochs | params |" in md  # the settings differ: a column
    assert "Ours: per row epochs" in md


def _fake_run_one(calls):
    """A `run_one` that trains nothing: records the cell, settings and run folder name."""

    def run_one(ds, dataset, arch, name, k, settings, sizes, args, mesh, figures):
        calls.append(((dataset, arch, name, k), dict(settings)))
        run = vpae_table.run_name(dataset, arch, name, k, settings["first_seed"], settings, sizes)
        return {"dataset": dataset, "arch": arch, "head": name, "K": k, "status": "ok",
                "L2": 1.0, "seed": settings["first_seed"], "s_per_epoch": run,
                **vpae_table.paper_row(dataset, arch, name, k), **settings}  # fmt: skip

    return run_one


def test_committed_rows_count_as_done_for_the_paper_settings_only(tmp_path, monkeypatch):
    """experiments/results/*.csv (no batch_size, nll_images, first_seed columns) read as made
    with the paper's settings: a paper-settings run retrains only the rows that are not ok, a
    run of other settings (epochs, batch, examples, eval/NLL images, seed) every row."""
    out = tmp_path / "out"
    out.mkdir()
    shutil.copy(RESULTS / "vpae_fashion_mnist.csv", out)
    committed = list(csv.DictReader(open(out / "vpae_fashion_mnist.csv")))
    assert "batch_size" not in committed[0] and "first_seed" not in committed[0]
    not_ok = {(r["arch"], r["head"], int(r["K"])) for r in committed if r["status"] != "ok"}
    assert len(not_ok) == 3  # two rejected K=10 full heads, one non-finite
    calls = []
    monkeypatch.setattr(vpae_table, "run_one", _fake_run_one(calls))
    base = ["--datasets", "fashion_mnist", "--out", str(out), "--runs", str(tmp_path / "runs"),
            "--no-progress"]  # fmt: skip

    def ran(*extra, fresh=False):
        if fresh:  # the committed file again (the fake marks every row it makes ok)
            shutil.copy(RESULTS / "vpae_fashion_mnist.csv", out)
        calls.clear()
        vpae_table.main([*base, *extra])
        return {(arch, head, k) for (_, arch, head, k), _ in calls}

    cells = vpae_table.grid(["fashion_mnist"], ["mlp", "cnn"], vpae_table.HEADS, [1, 10])
    all_cells = {(a, h, k) for _, a, h, k in cells}
    assert len(all_cells) == len(committed) == 39
    # the paper settings (the defaults; the same spelled out): only the rows that failed
    assert ran() == not_ok
    paper = "--epochs 20 --batch-size 128 --train-examples 60000 --eval-images 1000"
    assert ran(*paper.split(), "--nll-images", "10000", "--seed", "0", fresh=True) == not_ok
    table = list(csv.DictReader(open(out / "vpae_fashion_mnist.csv")))
    assert len(table) == 39  # the failed rows were replaced, not duplicated
    kept = {(r["arch"], r["head"], r["K"]): r for r in table}
    for r in committed:  # the finished rows are as committed
        if r["status"] == "ok":
            assert {k: kept[(r["arch"], r["head"], r["K"])][k] for k in r} == r
    # every other setting is a row of its own
    for extra in (["--epochs", "1"], ["--batch-size", "64"], ["--train-examples", "2048"],
                  ["--eval-images", "200"], ["--nll-images", "200"]):  # fmt: skip
        assert ran(*extra) == all_cells, extra
    assert calls[0][1]["nll_images"] == 200
    # normal_full K=1 finished with seed 2 after two non-finite runs: done for --seed 0, 1, 2
    assert ("mlp", "normal_full", 1) not in ran("--seed", "1", "--heads", "normal_full,mse")
    assert ran("--seed", "3", "--heads", "normal_full,mse", "--ks", "1", "--archs", "mlp") == {
        ("mlp", "normal_full", 1), ("mlp", "mse", 1)
    }  # fmt: skip


def test_quick_writes_under_runs_by_default(tmp_path, monkeypatch):
    """The user's bug: `--quick` without --out rewrote experiments/results (1-epoch rows marked
    ok, a new table header). The default --out is under runs/; experiments/results only when
    named."""
    monkeypatch.chdir(tmp_path)
    assert vpae_table.parse_args(["--quick"]).out == "runs/vpae_table_quick"
    assert vpae_table.parse_args([]).out == "runs/vpae_table"
    assert vpae_table.parse_args(["--out", "experiments/results"]).out == "experiments/results"
    calls = []
    monkeypatch.setattr(vpae_table, "run_one", _fake_run_one(calls))
    rows = vpae_table.main(["--quick", "--no-progress", "--runs", str(tmp_path / "r")])
    assert len(calls) == 9 and {int(r["epochs"]) for r in rows} == {1}
    assert (tmp_path / "runs" / "vpae_table_quick" / "vpae_fashion_mnist.csv").exists()
    assert not (tmp_path / "experiments").exists()
    # the quick runs' folders are not the paper runs' folders
    assert {s["train_examples"] for _, s in calls} == {2048}
    assert calls[0][1]["epochs"] == 1
    assert rows[0]["s_per_epoch"] == "fashion_mnist-mlp-mse-k1-s0-e1-n2048"


def test_run_names_keep_the_paper_folders_and_tell_other_settings_apart():
    paper = {"epochs": 20, "batch_size": 128, "first_seed": 0, "train_examples": 60000,
             "eval_images": 1000, "nll_images": 10000}  # fmt: skip
    name = vpae_table.run_name
    assert name("mnist", "mlp", "t_diag", 1, 2, paper, MNIST_SIZES) == "mnist-mlp-t_diag-k1-s2"
    other = {**paper, "epochs": 1, "batch_size": 64, "train_examples": 2048}
    assert name("mnist", "mlp", "t_diag", 1, 0, other, MNIST_SIZES) == (
        "mnist-mlp-t_diag-k1-s0-e1-b64-n2048"
    )
    # evaluation settings do not change the training run: its folder is shared
    evals = {**paper, "eval_images": 10, "nll_images": 10}
    assert name("mnist", "mlp", "t_diag", 1, 0, evals, MNIST_SIZES) == "mnist-mlp-t_diag-k1-s0"
    assert vpae_table.figure_tag("mnist", "cnn", "t_diag", 10, paper, MNIST_SIZES) == (
        "mnist-cnn-t_diag-k10"
    )
    seeded = {**paper, "first_seed": 3}
    assert vpae_table.figure_tag("mnist", "mlp", "mse", 1, seeded, MNIST_SIZES) == (
        "mnist-mlp-mse-k1-seed3"
    )


@pytest.mark.parametrize("dataset", ["fashion_mnist", "mnist"])
def test_committed_tables_are_rewritten_as_they_are(tmp_path, dataset):
    """The committed CSV, read and written back with the paper settings, gives the committed
    markdown table (new columns appended to the CSV, blank for the old rows)."""
    sizes = vpae_table.Sizes(60000, 10000)
    rows = vpae_table.read_rows(RESULTS, dataset, sizes, seed=0)
    args = vpae_table.argparse.Namespace(command_line="", seed=0)
    vpae_table.write_tables(list(rows.values()), tmp_path, dataset, sizes, args)
    committed = (RESULTS / f"vpae_{dataset}.md").read_text().splitlines()
    ours = (tmp_path / f"vpae_{dataset}.md").read_text().splitlines()
    table = [x for x in committed if x.startswith("|")]
    assert [x for x in ours if x.startswith("|")] == table and len(table) == 41
    assert "Ours: 20 epochs, batch 128" in ours[2] and "first 1000 test images" in ours[2]
    written = list(csv.DictReader(open(tmp_path / f"vpae_{dataset}.csv")))
    old = list(csv.DictReader(open(RESULTS / f"vpae_{dataset}.csv")))
    assert [{k: r[k] for k in old[0]} for r in written] == old
    assert {r["batch_size"] + r["nll_images"] + r["first_seed"] for r in written} == {""}


def test_two_grid_processes_share_one_results_file(tmp_path):
    """Each process rereads the file before writing: neither drops the other's finished rows."""
    args = vpae_table.argparse.Namespace(command_line="", seed=0)
    sizes = MNIST_SIZES

    def row(arch, head, l2, k=1, **settings):
        return {"dataset": "mnist", "arch": arch, "head": head, "K": k, "status": "ok",
                "L2": l2, "epochs": 20, "batch_size": 128, "first_seed": 0, "seed": 0,
                "train_examples": 60000, "eval_images": 1000, "nll_images": 10000,
                **settings}  # fmt: skip

    def keyed(*rows):
        return {vpae_table.row_key(r, sizes): r for r in rows}

    mlp = keyed(row("mlp", "mse", 1.6))
    cnn = keyed(row("cnn", "matrix_normal_identity", 1.7))
    vpae_table.save_rows(mlp, tmp_path, "mnist", sizes, args)  # both started from an empty file
    merged = vpae_table.save_rows(cnn, tmp_path, "mnist", sizes, args)
    assert set(merged) == set(mlp) | set(cnn)
    assert set(vpae_table.read_rows(tmp_path, "mnist", sizes)) == set(mlp) | set(cnn)
    mlp = keyed(row("mlp", "mse", 1.5))  # a process's newer row replaces its old one
    vpae_table.save_rows(mlp, tmp_path, "mnist", sizes, args)
    table = vpae_table.read_rows(tmp_path, "mnist", sizes)
    assert table[next(iter(mlp))]["L2"] == "1.5" and len(table) == 2
    md = (tmp_path / "vpae_mnist.md").read_text()
    assert "| cnn | matrix_normal_identity | 1 |" in md
    k10 = keyed(row("mlp", "normal_identity", 1.1, k=10))  # written last, listed in order
    vpae_table.save_rows(k10, tmp_path, "mnist", sizes, args)
    order = [(r["arch"], r["K"]) for r in vpae_table.read_rows(tmp_path, "mnist", sizes).values()]
    assert order == [("mlp", "1"), ("mlp", "10"), ("cnn", "1")]
    # a row of other settings is another row, beside the first
    short = keyed(row("mlp", "mse", 9.9, epochs=1))
    vpae_table.save_rows(short, tmp_path, "mnist", sizes, args)
    table = vpae_table.read_rows(tmp_path, "mnist", sizes)
    assert len(table) == 4
    assert sorted(r["L2"] for r in table.values() if r["head"] == "mse") == ["1.5", "9.9"]


def test_rows_of_earlier_releases_read_as_the_paper_settings():
    legacy = {
        "dataset": "mnist",
        "arch": "mlp",
        "head": "normal_full",
        "K": "1",
        "status": "ok",
        "epochs": "20",
        "seed": "2",
        "train_examples": "60000",
        "eval_images": "1000",
    }
    paper = {"epochs": 20, "batch_size": 128, "train_examples": 60000, "eval_images": 1000,
             "nll_images": 10000}  # fmt: skip
    read = vpae_table.row_settings
    # seed 2 is where a run asked for seed 0, 1 or 2 finished (up to two non-finite restarts)
    for asked in (0, 1, 2):
        assert read(legacy, MNIST_SIZES, asked) == {**paper, "first_seed": asked}
    assert read(legacy, MNIST_SIZES, 3)["first_seed"] == 2
    assert read(legacy, MNIST_SIZES)["first_seed"] == 2
    rejected = {"dataset": "mnist", "arch": "mlp", "head": "t_full", "K": "10", "status": "x"}
    assert read(rejected, MNIST_SIZES, 0) == {**paper, "first_seed": 0}
    new = {**legacy, "batch_size": "64", "nll_images": "100", "first_seed": "1"}
    assert read(new, MNIST_SIZES, 0) == {**paper, "batch_size": 64, "nll_images": 100,
                                         "first_seed": 1}  # fmt: skip


def test_help_shows_the_defaults(capsys):
    with pytest.raises(SystemExit):
        vpae_table.parse_args(["--help"])
    text = capsys.readouterr().out
    flat = " ".join(text.split())
    assert "(default: 20)" in flat and "(default: runs/vpae)" in flat
    assert "default: runs/vpae_table;" in flat and "(default: None)" not in flat
    assert "Command (full grid" in text  # the description keeps its layout
    assert "    python -m experiments.vpae_table --datasets fashion_mnist,mnist" in text


def test_variance_panel_scales_each_image_and_names_undefined_ones():
    var = np.zeros((3, 2, 2, 1))
    var[0] = [[[0.1], [0.5]], [[0.2], [0.0]]]
    var[1, 0, 0, 0] = np.nan  # a head without a variance
    var[2, 1, 1, 0] = np.inf  # a t head with 1 < df <= 2
    images, captions = vpae_table.variance_panel(var)
    np.testing.assert_allclose(images[0].ravel(), [0.2, 1.0, 0.4, 0.0])
    assert captions == ["max 0.5", "undefined", "undefined"]
    assert np.all(images[1:] == 0)
