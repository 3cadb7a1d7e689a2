"""The Probabilistic Auto-Encoder beyond its autoencoder (Boehm & Seljak 2020, Sec. 2).

- `noise_map`: the per-pixel noise sigma of the implicit likelihood, Eq. 8;
- `fit_flow`: the second stage: the latent flow fitted to the codes of the training set by
  maximum likelihood (Eq. 5), early-stopped on the codes of the validation set, the
  autoencoder frozen; it checkpoints and resumes in ``<run>/stage2`` like any run;
- `sample` (Eq. 6, x = g(b^-1(u))) and `interpolate` (straight lines in u);
- `score`: the out-of-distribution scores of Sec. 2.2 for a batch of images, through
  `jaxae.laplace` (one jitted call per batch: vmap over images, MAP inside `lax` loops).

Images are what the datasets hold: uint8 [B, H, W, C] (or floats in [0, 1]). A model knows the
pixel scale it was trained on (`models.Model.scale`, the run's ``config.data.scale``; the PAE
paper's: 'centered', pixels in [-0.5, 0.5]), so no function here needs it: their `scale`
argument (None: the model's own) is only checked against it.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from jaxae import checkpoint, laplace, models, objectives, parallel, plots, train
from jaxae import config as jconfig
from jaxae import data as jdata

# Floor of the noise map: the std of the uniform dequantization noise, 1 / (256 sqrt(12)). A pixel
# the autoencoder always reconstructs exactly (a border that is always black) is still only known
# to within its quantization.
SIGMA_FLOOR = 1.0 / (256.0 * math.sqrt(12.0))
BATCH = 500
LAZY_CHUNK = 10_000  # images of a set read when used (`jaxae.data.LazyImages`) held at once


def _inputs(model, images, scale: str | None = None, name: str = "images") -> np.ndarray:
    """Checked images (`data.check_images`) of the model's shape, as the model's float inputs
    [B, H, W, C] (its own pixel scale; a `scale` given must be it: `Model.check_scale`)."""
    pre = model.check_scale(scale)
    return np.asarray(pre(jdata.check_images(images, name, shape=model.image_shape)))


def _map(fn, model, x: np.ndarray, batch_size: int = BATCH):
    """fn(model, x_batch) over x in batches, jitted once (eval mode, host results)."""
    graphdef, state = nnx.split(model)

    @jax.jit
    def step(state, xb):
        return fn(nnx.merge(graphdef, state), xb)

    out = [step(state, x[i : i + batch_size]) for i in range(0, len(x), batch_size)]
    return jax.tree.map(lambda *a: np.concatenate([np.asarray(b) for b in a]), *out)


def _decoded(m, z):
    """g(z) [B, N]: the decoder's image for codes z [B, K], flattened, as its head reads its raw
    outputs (`Model.point`: the `mse` head's output itself, a Normal head's mean, which a
    head's raw outputs hold beside its mixture logits and scales)."""
    return m.point(m.decode(z))[0].reshape(z.shape[0], -1)


def encode(model, images, *, scale: str | None = None, batch_size: int = BATCH) -> np.ndarray:
    """The codes f(x) [B, K] of images [B, H, W, C] (eval mode); a streamed training set
    (`jaxae.data.LazyImages`) is read and encoded `LAZY_CHUNK` images at a time."""
    model.eval()
    if isinstance(images, jdata.LazyImages):
        parts = [encode(model, images[i : i + LAZY_CHUNK], scale=scale, batch_size=batch_size)
                 for i in range(0, len(images), LAZY_CHUNK)]  # fmt: skip
        return np.concatenate(parts)
    return _map(lambda m, x: m.encode(x), model, _inputs(model, images, scale), batch_size)


def noise_map(model, images, *, scale: str | None = None, batch_size: int = BATCH) -> np.ndarray:
    """Eq. 8's sigma [N]: each pixel's root-mean-square reconstruction error over `images` (the
    validation set), floored at `SIGMA_FLOOR`.

    The paper: "sigma_i are the mean pixel-wise reconstruction errors of the AE, measured on
    the validation data". For the Gaussian of Eq. 8 the maximum-likelihood sigma_i^2 is the mean
    squared error of pixel i, so sigma_i is its root.
    """
    model.eval()
    x = _inputs(model, images, scale, "validation images")

    def sq_err(m, xb):
        return jnp.sum((_decoded(m, m.encode(xb)) - xb.reshape(xb.shape[0], -1)) ** 2, axis=0)[None]

    total = _map(sq_err, model, x, batch_size).sum(0)
    return np.maximum(np.sqrt(total / len(x)), SIGMA_FLOOR).astype(np.float32)


def stage_config(config):
    """The config `train.fit` sees in the flow stage: its batch, epochs and Adam rate."""
    fc = jconfig.from_dict(config.to_dict())
    f = config.flow
    fc.training.batch_size, fc.training.epochs = f.batch_size, f.epochs
    fc.training.steps_per_call, fc.training.checkpoint_every, fc.training.max_steps = 0, 0, 0
    fc.optimizer.learning_rate, fc.optimizer.decay_epochs = f.learning_rate, ()
    return fc


def build(ae, sigma, codes, *, flow: dict | None = None, seed: int = 0) -> models.PAE:
    """A PAE from a trained autoencoder `ae`: its networks, the noise map `sigma` [N] (Eq. 8,
    `noise_map`), the standardisation of its training `codes` [n, K] and a new flow described
    by `flow` (`models.flow_spec`: kind, layers, hidden, blocks, bins), the identity until
    trained (`fit_flow` trains it)."""
    sigma, codes = np.asarray(sigma, np.float32), np.asarray(codes)
    if sigma.shape != (math.prod(ae.image_shape),) or not np.all(sigma > 0):
        raise ValueError(f"sigma must be positive, shape [{math.prod(ae.image_shape)}]: one "
                         f"std per pixel; got shape {sigma.shape}")  # fmt: skip
    if codes.ndim != 2 or codes.shape[1] != ae.latent_dim or len(codes) < 2:
        raise ValueError(f"codes must be [n >= 2, K={ae.latent_dim}], got {codes.shape}")
    pae = models.build({**ae.spec, "kind": "pae", "seed": seed, "flow": flow or {}})
    nnx.update(pae.net, nnx.state(ae.net))
    pae.sigma[...] = jnp.asarray(sigma)
    pae.code_loc[...] = jnp.asarray(codes.mean(0), jnp.float32)
    pae.code_scale[...] = jnp.asarray(np.maximum(codes.std(0), 1e-6), jnp.float32)
    pae.fitted[...] = jnp.ones((), jnp.int32)
    return pae


def check_flow_batch(config, num_codes: int) -> None:
    """Raise a ValueError naming config ``flow.batch_size`` when the flow stage's `num_codes`
    training codes (one per training image) fill no batch of it."""
    if num_codes < config.flow.batch_size:
        raise ValueError(f"the flow stage has {num_codes} training codes, fewer than one batch "
                         f"of config flow.batch_size={config.flow.batch_size}: set "
                         "flow.batch_size lower (or data.val_size, which holds out training "
                         "images)")  # fmt: skip


def fit_flow(config, workdir, *, dataset, mesh=None, progress: bool = True) -> dict:
    """The PAE's second stage on a trained autoencoder run: fit, checkpoint, resume.

    Reads the autoencoder of ``<workdir>/checkpoints``, measures the noise map (Eq. 8) on
    ``dataset.val``, encodes ``dataset.train`` and fits the flow to those codes (Eq. 5) in
    ``<workdir>/stage2`` with Adam, early-stopped on the validation codes' NLL
    (``config.flow``). The autoencoder is frozen and in eval mode. `checkpoint.restore_params`
    of the run folder then gives the whole PAE. Returns the stage's summary.

    Every checkpoint of the stage records the autoencoder's step and fingerprint
    (`checkpoint.stage_record`); resuming a flow that was fitted on another autoencoder
    checkpoint than the newest one raises `checkpoint.StageMismatchError`.
    """
    config = jconfig.validate(config)
    workdir = Path(workdir)
    if dataset.val is None:
        raise ValueError("the flow stage needs validation data: set config data.val_size > 0")
    ae = checkpoint.restore_params(workdir, stage=1)
    k_saved, k_config = ae.spec.get("latent_dim"), config.model.latent_dim
    if k_saved != k_config:
        raise checkpoint.ModelMismatchError(
            f"{workdir}: the checkpoint's autoencoder has K={k_saved} latent dimensions, the "
            f"config K={k_config}: use the run's own config or a new workdir"
        )
    checkpoint.check_stages(workdir)  # never resume a flow fitted on another autoencoder
    fitted_on = checkpoint.stage_record(workdir, ae.step, stage=1, name="autoencoder")
    t0 = time.perf_counter()
    scale = config.data.scale
    sigma = noise_map(ae.model, dataset.val.images, scale=scale)
    codes = {s: encode(ae.model, getattr(dataset, s).images, scale=scale) for s in ("train", "val")}
    f = config.flow
    check_flow_batch(config, len(codes["train"]))
    flow = {k: f[k] for k in ("kind", "layers", "hidden", "blocks", "bins")}
    model = build(ae.model, sigma, codes["train"], flow=flow, seed=config.training.seed)
    graphdef, params, model_state = objectives.split(model, train=False)
    if not progress and jax.process_index() == 0:  # without a progress bar, mark the stage
        print(f"flow stage: fitting {model.flow_spec['kind']} on {len(codes['train'])} codes of "
              f"the autoencoder at step {ae.step} -> {workdir / 'stage2'}", flush=True)  # fmt: skip

    def nll(params, model_state, batch, key):
        del key
        value = -nnx.merge(graphdef, params, model_state).latent_log_prob(batch["z"])
        return {"loss": value, "nll": value}, model_state

    fc = stage_config(config)
    optimizer = optax.adam(fc.optimizer.learning_rate)
    update = train.grouped({"flow": train.Group(("flow",), nll, optimizer)})
    mesh = mesh or parallel.data_mesh()
    eval_step = parallel.data_parallel(
        jax.jit(lambda p, s, b: nll(p, s, b, None)[0]), mesh, batch_argnums=(2,), donate_argnums=()
    )

    def eval_fn(state):
        args = (state["params"], state["model_state"])
        return parallel.batch_means(eval_step, {"z": codes["val"]}, BATCH, args=args, mesh=mesh)

    result = train.fit(
        fc, workdir / "stage2", params=params, model_state=model_state, update=update,
        train={"z": codes["train"]}, mesh=mesh, eval_fn=eval_fn, progress=progress,
        model=model.spec, data_files=dataset.files,
        early_stopping=train.EarlyStopping("nll", config.flow.patience),
        extra_meta={"stage": {"name": "latent flow", "fitted_on": fitted_on},
                    **({"standardization": dataset.standardization.to_dict()}
                       if dataset.standardization is not None else {})},
    )  # fmt: skip
    best = result.state["best"]
    history = result.history
    summary = {
        "stage": "flow",
        "flow": model.flow_spec,
        "autoencoder_step": ae.step,
        "epochs": int(result.state["step"])
        // max(len(codes["train"]) // fc.training.batch_size, 1),
        "best_epoch": int(best["epoch"]),
        "val_nll": float(best["value"]),  # nats per code, at the best epoch
        "sigma_mean": float(sigma.mean()),
        "seconds": time.perf_counter() - t0,  # this call's
        "train_seconds": _logged_seconds(workdir / "stage2" / "metrics.jsonl"),  # every call's
        "resumed_from": result.resumed_from,
        "last": history[-1] if history else None,
    }
    if jax.process_index() == 0:
        (workdir / "stage2" / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def _logged_seconds(path: Path) -> float:
    """The training time a run's metrics log records, over every session that wrote it."""
    lines = path.read_text().splitlines() if path.exists() else []
    return float(sum(json.loads(x).get("seconds", 0.0) for x in lines if x.strip()))


# --- Using a fitted PAE --------------------------------------------------------------------------


def require_fitted(model, use: str) -> None:
    """Check that `model` is a PAE whose noise map and flow are fitted, and set eval mode.

    Raises:
      TypeError: not a `models.PAE`; for a plain autoencoder (the first stage of a PAE run,
        or a run without one), how to fit its latent flow.
      models.NotFittedError: a PAE whose second stage has not been fitted.
    """
    if not isinstance(model, models.PAE):
        what = f"got a {type(model).__name__}"
        if hasattr(model, "kind"):
            what += f" (model kind {model.kind!r})"
        if hasattr(model, "model") and hasattr(model, "spec"):  # a checkpoint.Restored
            what += ": pass its .model (`checkpoint.restore_params(run).model`)"
        if type(model) is models.Autoencoder:  # a PAE run's first stage, or an AE run
            what = (f"this is a plain autoencoder ({type(model).__name__}, kind {model.kind!r}) "
                    "whose latent flow was never fitted, or restored with stage=1: restore the "
                    "run without stage= for the PAE (`jaxae.checkpoint.restore_params(run)`); "
                    f"if its flow was never fitted, {models.FIT_FLOW_HINT}")  # fmt: skip
        raise TypeError(f"{use} needs a PAE (models.PAE); {what}")
    model.check_fitted(use)
    model.eval()


_FNS: dict[str, dict] = {}


def _fns(model: models.PAE, graphdef) -> dict:
    """One set of single-example functions of ``(state, input)`` per PAE description, so that
    jitted callers compile once per kind of model, not once per call (graphdefs are not
    hashable): decode z [K] -> g(z) [N]; flow z -> (u, log_det); generate u -> g(b^-1(u))."""
    key = json.dumps(model.spec, sort_keys=True)
    if key not in _FNS:

        def decode(state, z):
            return _decoded(nnx.merge(graphdef, state), z[None])[0]

        def flow(state, z):
            return nnx.merge(graphdef, state).latent_flow(z)

        def generate(state, u):
            m = nnx.merge(graphdef, state)
            z = m.flow.inverse(u) * m.code_scale[...] + m.code_loc[...]
            return _decoded(m, z[None])[0]

        _FNS[key] = {"decode": decode, "flow": flow, "generate": generate}
    return _FNS[key]


def functions(model: models.PAE):
    """``(decode, flow, sigma)`` of a fitted PAE in `jaxae.laplace`'s form: single-example
    callables bound to the model's weights (`jax.tree_util.Partial`, so new weights of the same
    model do not recompile) and the noise map [N]."""
    require_fitted(model, "jaxae.laplace scoring")
    graphdef, state = nnx.split(model)
    fns, partial = _fns(model, graphdef), jax.tree_util.Partial
    return partial(fns["decode"], state), partial(fns["flow"], state), jnp.asarray(model.sigma[...])


def generator(model: models.PAE):
    """``(generate, sigma)``: u [K] -> g(b^-1(u)) [N] bound to the weights (the PAE's
    generative process, Eq. 6, used by `jaxae.inpaint`) and the noise map [N]."""
    require_fitted(model, "the PAE generator")
    graphdef, state = nnx.split(model)
    return jax.tree_util.Partial(_fns(model, graphdef)["generate"], state), jnp.asarray(
        model.sigma[...]
    )


SCORES = ("reconstruction", "latent_density", "eq12", "eq12_map", "log_evidence")


def score(model: models.PAE, images, *, scale: str | None = None, map_steps: int = 100,
          batch_size: int = 256, laplace_scores: bool = True,
          progress=None) -> dict[str, np.ndarray]:  # fmt: skip
    """The PAE's out-of-distribution scores of each image [B, H, W, C] (higher: more
    in-distribution).

    Keys (each [B], float64 on the host): 'reconstruction' (a, the first term of Eq. 12 at
    f(x)), 'latent_density' (b, log p(f(x)), the paper's "PAE density"), 'eq12' (Eq. 12 at
    f(x)) and, with `laplace_scores`, 'eq12_map' (c, Eq. 12 at the MAP z' of Eq. 9, reached by
    `map_steps` optimiser steps from f(x)), 'log_evidence' (d, Eq. 11 at z') and the MAP's
    report ('map_objective': the value of Eq. 9's objective at z', 'map_converged',
    'map_grad_norm', 'map_steps').

    Args:
      model: a fitted `models.PAE` (`checkpoint.restore_params(run).model`).
      images: uint8 [B, H, W, C] (or [B, H, W]), or floats in [0, 1]; the model's pixel scale is
        applied here.
      scale: leave out (the model's own); a different value raises.
      map_steps: optimiser steps of the MAP of Eq. 9, for (c) and (d).
      batch_size: images per jitted call of the Laplace scores.
      laplace_scores: False: only (a), (b) and Eq. 12 at f(x), without any optimisation.
      progress: None, or a callable ``progress(done, total)`` called after each batch of the
        Laplace scores (e.g. to print or update a bar).
    """
    require_fitted(model, "scoring")
    x = _inputs(model, images, scale)
    if not laplace_scores:

        def cheap(m, xb):
            z = m.encode(xb)
            err = (xb.reshape(xb.shape[0], -1) - _decoded(m, z)) / m.sigma[...]
            rec = -0.5 * jnp.sum(err**2, axis=-1)
            dens = m.latent_log_prob(z)
            u, log_det = m.latent_flow(z)
            return {"reconstruction": rec, "latent_density": dens,
                    "eq12": rec - 0.5 * jnp.sum(u**2, -1) + log_det}  # fmt: skip

        out = _map(cheap, model, x, BATCH)
        return {k: v.astype(np.float64) for k, v in out.items()}
    decode, flow, sigma = functions(model)
    xf = x.reshape(len(x), -1)
    z0 = _map(lambda m, xb: m.encode(xb), model, x, BATCH)  # the MAP's start f(x)
    out: dict[str, list] = {}
    for i in range(0, len(x), batch_size):
        r = laplace.scores(decode, flow, sigma, xf[i : i + batch_size], z0[i : i + batch_size],
                           map_steps=map_steps)  # fmt: skip
        for k, v in r.items():
            out.setdefault(k, []).append(np.asarray(v))
        if progress:
            progress(min(i + batch_size, len(x)), len(x))
    return {k: np.concatenate(v).astype(np.float64 if v[0].dtype.kind == "f" else v[0].dtype)
            for k, v in out.items() if k != "z_map"}  # fmt: skip


def sample(model: models.PAE, key, n: int, *, scale: str | None = None) -> np.ndarray:
    """n images drawn from the PAE (Eq. 6: x = g(b^-1(u)), u ~ N(0, I)): [n, H, W, C] in [0, 1]."""
    require_fitted(model, "sampling")
    if isinstance(n, bool) or not isinstance(n, int | np.integer) or n < 1:
        raise ValueError(f"sample: n is the number of images to draw, an integer >= 1; got {n!r}")
    offset = model.check_scale(scale).offset
    z = np.asarray(model.sample_codes(key, int(n)))
    return _map(lambda m, zb: jnp.clip(m.point(m.decode(zb))[0] + offset, 0.0, 1.0), model, z)


def interpolate(model: models.PAE, a, b, *, scale: str | None = None,
                steps: int = 8) -> np.ndarray:  # fmt: skip
    """Images along the straight line between the flow's u of images a and b [B, ...]:
    [B, steps, H, W, C] in [0, 1] (the paper's Fig. 4 interpolations)."""
    require_fitted(model, "interpolation")
    offset = model.check_scale(scale).offset
    za, zb = encode(model, a, scale=scale), encode(model, b, scale=scale)
    ua, ub = (np.asarray(model.latent_flow(jnp.asarray(z))[0]) for z in (za, zb))
    t = np.linspace(0.0, 1.0, steps, dtype=np.float32)[None, :, None]
    u = (ua[:, None] * (1 - t) + ub[:, None] * t).reshape(-1, za.shape[1])

    def decode_u(m, ub_):
        z = m.flow.inverse(ub_) * m.code_scale[...] + m.code_loc[...]
        return jnp.clip(m.point(m.decode(z))[0] + offset, 0.0, 1.0)

    images = _map(decode_u, model, u)
    return images.reshape(len(za), steps, *images.shape[1:])


def write_figures(model: models.PAE, images, folder, *, scale: str | None = None,
                  seed: int = 0) -> list[Path]:  # fmt: skip
    """``samples.png`` (40 samples, Eq. 6) and ``interpolations.png`` (the straight line in u
    between images[i] and images[m + i], 10 steps, for m = min(8, len(images) // 2) rows: 8 for
    16 images; none for a single image) in `folder`. Images [B, H, W, C], grey or colour."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    s = sample(model, jax.random.PRNGKey(seed), 40, scale=scale)
    paths = [
        plots.image_grid(
            list(s.reshape(4, 10, *s.shape[1:])),
            folder / "samples.png",
            title="40 PAE samples, x = g(b^-1(u)), u ~ N(0, I) (Eq. 6)",
        )
    ]
    m = min(8, len(images) // 2)  # a small test split (a folder of your own) gives fewer rows
    if m == 0:
        return paths
    path = interpolate(model, images[:m], images[m : 2 * m], scale=scale, steps=10)
    paths.append(plots.image_grid(
        list(path), folder / "interpolations.png",
        row_labels=[f"images {i}, {m + i}" for i in range(len(path))],
        col_labels=[f"{t:.2g}" for t in np.linspace(0.0, 1.0, path.shape[1])],
        title="decoded straight lines in the flow's u: (1 - t) u_a + t u_b, t above",
    ))  # fmt: skip
    return paths
