"""The command line the PAE experiments share (`pae_table1`, `pae_ood`, `pae_inpaint`): a CPU
or a paper-scale configuration, where the runs and the results go, and a timed log."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import NamedTuple


def parser(doc: str, runs: str, *, seed: bool = True) -> argparse.ArgumentParser:
    """--cpu, --runs (default ``<runs>`` or ``<runs>_paper``), --out, --data-dir and, with
    `seed`, --seed."""
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--cpu", action="store_true", help="the scaled-down CPU configuration")
    p.add_argument("--runs", default=None, help=f"run folders' root (default {runs}[_paper])")
    p.add_argument("--out", default="experiments/results", help="where tables and PNGs go")
    p.add_argument("--data-dir", default=None)
    if seed:
        p.add_argument("--seed", type=int, default=0)
    p.set_defaults(default_runs=runs)
    return p


class Session(NamedTuple):
    runs: Path
    out: Path
    log: callable  # log(message): one line, prefixed with the seconds since the start


def start(args) -> Session:
    """The run and output folders of parsed `args`, and a log that times itself."""
    runs = Path(args.runs or (args.default_runs + ("" if args.cpu else "_paper")))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()

    def log(msg: str) -> None:
        print(f"[{time.perf_counter() - t0:6.0f} s] {msg}", flush=True)

    return Session(runs, out, log)


def ks(text: str | None, default: tuple[int, ...]) -> tuple[int, ...]:
    """--ks '4,8,16' -> (4, 8, 16); None -> `default`."""
    return tuple(int(k) for k in text.split(",")) if text else default
