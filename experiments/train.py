"""Train any jaxae model from a config file: the one short main (flax examples' shape).

    python -m experiments.train --config experiments/configs/demo.py --workdir runs/demo
    python -m experiments.train --config experiments/configs/vpae.py:t_diag \
        --config.training.epochs=2 --workdir runs/t_diag

`--config FILE[:ARG]` names a Python file whose ``get_config(ARG)`` returns the run's config
(`jaxae.config`); ``--config.<section>.<field>=value`` overrides any field, the settings of the
model's kind included (a config of ``config.default('wae')``: ``--config.wae.weight=5``). The
model trains as it declares (`jaxae.train.model_update`: its parameter groups, e.g. a critic
with its own optimizer and steps). Running it again in
the same workdir resumes; a larger ``training.epochs`` extends the run. Writes
``<workdir>/metrics.jsonl``, ``checkpoints/`` (orbax), ``summary.json`` (test metrics) and
``reconstructions.png`` (test images above their reconstructions), then ``curves.png`` (the
training curves of every stage, `jaxae.plots.training_curves`). A config with
``flow.epochs > 0`` then fits the PAE's latent flow to the codes (`jaxae.pae.fit_flow`, in
``<workdir>/stage2``, resumable too), adds its summary under ``flow`` and draws
``stage2/samples.png`` (Eq. 6) and ``stage2/interpolations.png`` (between test images).
"""

from __future__ import annotations

import json
import re
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags, logging
from ml_collections import config_flags

from jaxae import checkpoint, models, objectives, pae, parallel, plots, train
from jaxae import config as jconfig
from jaxae import data as jdata
from jaxae.checkpoint import CheckpointError

EVAL_BATCH = 500


def train_and_evaluate(config, workdir, *, data_dir=None, progress: bool = True) -> dict:
    """Train (or resume) the config's model in `workdir`; returns the summary it writes."""
    config = jconfig.validate(config)
    dc, tc = config.data, config.training
    workdir = Path(workdir)
    mesh = parallel.data_mesh()

    # --- Input: any source `data.dataset` names (a built-in name, tfds:NAME, an .npz file of
    # images or of vectors, an image folder), in host memory or, over data.memory_budget_mb, a
    # folder's or tfds' training images read when used (`jaxae.data.LazyImages`); the model takes
    # its images' shape (below). Vectors come standardized (`jaxae.data.Standardization`).
    ds = jdata.load_config(dc, seed=tc.seed, data_dir=data_dir)
    jconfig.check_data(config, ds)
    vectors = ds.standardization is not None
    pre = jdata.Preprocess(scale=dc.scale, dequantize=dc.dequantize, binarize=dc.binarize)
    eval_pre = jdata.Preprocess(scale=dc.scale)
    held_out = ds.val if ds.val is not None else ds.test

    # --- Stages: a later stage of this run (the PAE's flow, <workdir>/stage2) was fitted on one
    # checkpoint of this training; training past it would leave that stage on a model that no
    # longer exists, so refuse before training (and if the stages already disagree).
    if config.flow.epochs:  # before the autoencoder trains
        pae.check_flow_batch(config, len(ds.train.images))
    checkpoint.check_stages(workdir)
    fitted_on = checkpoint.depended_steps(workdir)
    target = train.total_steps(tc, len(ds.train.images))
    if fitted_on and target > max(fitted_on):
        later = checkpoint.stage_dirs(workdir)[1]
        raise checkpoint.StageMismatchError(
            f"{workdir}: refusing to train it to step {target}: its later stage {later} (e.g. "
            f"the PAE's latent flow) was fitted on its step {max(fitted_on)} and would no longer "
            f"match it. Use a new --workdir, or delete {later} deliberately to fit it again."
        )

    # --- Model, objective, update.
    # The model, and so its checkpoints, carry the pixel scale (`models.Model.scale`) and the
    # settings of its kind (the config section named after it, `models.Model.settings`).
    spec = {**config.model.to_dict(), "image_shape": list(ds.train.images.shape[1:]),
            "scale": dc.scale}  # fmt: skip
    if config.model.kind in config:
        spec["settings"] = config[config.model.kind].to_dict()
    model = models.build({**spec, "seed": tc.seed}, force=False)
    graphdef, params, model_state = objectives.split(model, train=True)
    eval_graphdef = objectives.split(model, train=False)[0]
    # The model's own parameter groups: one loss and optimizer, or (a critic) one per group.
    steps_per_epoch = len(ds.train.images) // tc.batch_size
    update = train.model_update(model, graphdef, config.optimizer, steps_per_epoch)
    eval_loss = objectives.loss_fn(eval_graphdef)

    def prepare(batch, key):
        return {**batch, "image": pre(batch["image"], key)}

    @jax.jit
    def eval_terms(params, model_state, batch):
        return eval_loss(params, model_state, {"image": eval_pre(batch["image"])}, None)[0]

    eval_step = parallel.data_parallel(eval_terms, mesh, batch_argnums=(2,), donate_argnums=())

    def eval_fn(state):
        args = (state["params"], state["model_state"])
        data = {"image": held_out.images}
        return parallel.batch_means(eval_step, data, EVAL_BATCH, args=args, mesh=mesh)

    # --- Train.
    t0 = time.perf_counter()
    result = train.fit(
        config, workdir, params=params, model_state=model_state, update=update,
        train={"image": ds.train.images}, prepare=prepare, mesh=mesh, eval_fn=eval_fn,
        progress=progress, model=model.spec, data_files=ds.files,
        extra_meta={"standardization": ds.standardization.to_dict()} if vectors else None,
    )  # fmt: skip
    seconds = time.perf_counter() - t0

    # --- Evaluate: test terms and reconstructions of the first 16 test images.
    state = result.state
    args = (state["params"], state["model_state"])
    test = parallel.batch_means(eval_step, {"image": ds.test.images}, EVAL_BATCH, args=args)
    if jax.process_index() != 0:
        return test
    trained = objectives.merge(eval_graphdef, parallel.to_host(state["params"]),
                               parallel.to_host(state["model_state"]))  # fmt: skip
    offset = eval_pre.offset
    x = eval_pre(jnp.asarray(ds.test.images[:16]))
    recon = np.clip(trained.point(trained.decode(trained.encode(x)), jax.random.PRNGKey(0))[0]
                    + offset, 0, 1)  # fmt: skip
    png = None if vectors else plots.image_grid(
        [x + offset, recon], workdir / "reconstructions.png",
        row_labels=["test images", "reconstructions"])  # fmt: skip
    history = result.history
    summary = {
        "model": model.spec,
        "steps": int(state["step"]),
        "resumed_from": result.resumed_from,
        "devices": mesh.devices.size,
        "backend": jax.default_backend(),
        "train_loss_last": _train_loss(history[-1]) if history else None,
        "test": test,
        "fit_seconds": seconds,
        "examples_per_s_last": history[-1]["examples_per_s"] if history else None,
        "data_files": list(ds.files),
        "reconstructions": png and png.name,
    }
    if "mse" in test and not vectors:
        summary["test_psnr_db"] = float(10 * np.log10(1.0 / test["mse"]))
    if vectors:  # the test terms are of the standardized vectors; the data's NLL adds log_det
        summary["standardization"] = ds.standardization.to_dict()
        if "nll" in test:  # as `jaxae.evaluate` reports it: in the data's own units
            summary["test_nll_data_units"] = test["nll"] + ds.standardization.log_det
    if config.flow.epochs:
        summary["flow"] = pae.fit_flow(config, workdir, dataset=ds, mesh=mesh, progress=progress)
        fitted = checkpoint.restore_params(workdir).model
        if not vectors:
            pngs = pae.write_figures(fitted, ds.test.images[:16], workdir / "stage2",
                                     scale=dc.scale)  # fmt: skip
            summary["flow"]["figures"] = [str(p.relative_to(workdir)) for p in pngs]
    summary["curves"] = plots.training_curves(workdir).name  # every stage's metrics.jsonl
    (workdir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def _train_loss(line: dict):
    """The last logged training loss: a number, or for a model trained in parameter groups
    {group: its loss} (their sum would mean nothing: a critic's loss opposes the model's)."""
    if "loss" in line:
        return line["loss"]
    return {k.removesuffix("/loss"): v for k, v in line.items() if k.endswith("/loss")}


_CONFIG = config_flags.DEFINE_config_file("config", None, "config file[:arg]", lock_config=True)
flags.DEFINE_string("workdir", None, "run folder (resumed if it holds checkpoints)")
flags.DEFINE_string(
    "data_dir",
    None,
    "folder with the dataset files (else the usual places); "
    "for data.dataset=tfds:NAME, the data folder of tensorflow-datasets",
)
flags.DEFINE_bool("progress", True, "show a progress bar")
flags.mark_flags_as_required(["config", "workdir"])


def unknown_override(argv) -> str | None:
    """The first ``--config.<field>`` override of `argv` naming a field no config has
    (`jaxae.config.known_fields`: `default()`'s, and every registered model kind's settings),
    or None."""
    known = set(jconfig.known_fields())
    for arg in argv:
        m = re.match(r"--?(?:no)?config\.([^=]+)", arg)
        if m and m.group(1) not in known:
            return m.group(1)
    return None


def config_file_error(error: Exception) -> ValueError | None:
    """The ValueError a config file's ``get_config(arg)`` raised (a bad ``--config file:arg``),
    found under the errors absl and ml_collections wrap it in, or None for any other error."""
    if "Error whilst parsing config file" not in str(error):
        return None
    while error.__context__ is not None and not error.__suppress_context__:
        error = error.__context__
    return error if isinstance(error, ValueError) else None


def other_kind_override(argv) -> str | None:
    """For ``--config.<kind>.<field>`` overrides of a model kind's settings that the config has
    no section for (``--config.wae.weight=5`` on an RAE config, which ml_collections refuses
    with a bare KeyError): `jaxae.config.validate`'s one line about that section (another kind's
    settings), found by parsing the flags again without those overrides; else None."""
    sections = [m.group(1) for arg in argv
                if (m := re.match(r"--?(?:no)?config\.([^.=]+)\.", arg))]  # fmt: skip
    kinds = {s for s in sections if s not in jconfig.SECTIONS and s in jconfig.known_fields()}
    if not kinds:
        return None
    pattern = rf"--?(?:no)?config\.({'|'.join(kinds)})\."
    given = [a for a in argv if re.match(pattern, a)]
    rest = [a for a in argv if a not in given]
    saved = sys.argv
    sys.argv = rest  # ml_collections reads the overrides from sys.argv
    try:
        flags.FLAGS(rest)
    except (flags.Error, KeyError, AttributeError):
        return None
    finally:
        sys.argv = saved
    d = _CONFIG.value.to_dict()
    for section in kinds:
        d.setdefault(section, {})
    try:
        jconfig.validate(d)
    except ValueError as e:
        return f"{given[0]}: {e}"
    return None


def parse_flags(argv):
    """`app.run`'s flag parsing, with a misspelt config override (``--config.trainig.epochs=1``)
    reported in one line naming the closest field, and exit status 2 (a usage error); so are a
    config file's refusal of its argument (``pae.py:eight``) and an override of another model
    kind's settings (``--config.wae.weight=5`` on an RAE config)."""
    try:
        return flags.FLAGS(argv)
    except flags.Error as e:
        cause = config_file_error(e)
        if cause is None:
            return app.parse_flags_with_usage(argv)  # absl's usual message and exit status
        print(f"error: {cause}", file=sys.stderr)
        sys.exit(2)
    except (KeyError, AttributeError):
        # ml_collections raises these from its override parsing (`config_flags`' _ConfigFlag
        # parse) for a field the config lacks, as a 55-line traceback.
        field = unknown_override(argv)
        message = jconfig.unknown_field(field) if field else other_kind_override(argv)
        if message is None:
            raise
        print(f"error: {message}", file=sys.stderr)
        sys.exit(2)


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO
    parallel.initialize_distributed()
    config = _CONFIG.value
    f = flags.FLAGS
    m = config.model
    print(f"jaxae: {m.kind} {m.arch} {m.head} on {config.data.dataset}, "
          f"{jax.device_count()} device(s) -> {f.workdir}", flush=True)  # fmt: skip
    try:
        summary = train_and_evaluate(config, f.workdir, data_dir=f.data_dir, progress=f.progress)
    except (ValueError, FileNotFoundError, CheckpointError) as e:  # bad input: say what, briefly
        sys.exit(f"error: {e}")
    except KeyboardInterrupt:  # `fit` has waited for any save in flight: nothing is lost
        print(f"\ninterrupted: the last checkpoint in {f.workdir} is complete; run the same "
              "command to resume from it", file=sys.stderr)  # fmt: skip
        sys.exit(130)
    print(json.dumps({k: v for k, v in summary.items() if k != "data_files"}, indent=2))


if __name__ == "__main__":
    app.run(main, argv=sys.argv, flags_parser=parse_flags)
