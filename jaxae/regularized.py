"""The regularized-autoencoder family: deterministic autoencoders whose codes are pulled toward a
prior by a named regularizer, a critic or a learned prior.

Every model here is an `jaxae.models.Autoencoder` with the `mse` head (any `jaxae.nets` network;
the papers' is `dcgan`, the GMM-DAE appendix's Table 1) and adds, through the model interface:
- `latent(x, key) -> (z, {term: [B]})`: the code and its regularizer terms (`jaxae.regularizers`),
  summed into the loss by `jaxae.objectives.terms`;
- `groups()`: the parameter groups the trainer steps (`jaxae.models.ParamGroup`): a critic or a
  prior generator is a group with its own loss method, optimizer settings and steps;
- `prior_sample(key, n)`: the model's own prior, the default ex-post sampler (`jaxae.priors`).

Units. The papers weigh their regularizers against a per-image sum of squared errors
sum_i (x_i - x^_i)^2; jaxae's reconstruction term is the per-pixel mean (the `mse` head). Every
weight in a model's settings is in the papers' units, and the model divides it by the number of
pixels D, so the objective is the paper's divided by D (Adam is invariant to that scale).

Models (`config.default(kind)` gives each one's settings section):
- `gmmdae` (Saseendran et al. 2021, "Shape your Space"): a Gaussian-mixture prior (10 equally
  weighted components at the one-hot vectors, unit std; or any given one) matched by a weighted
  sum of the mean-squared covariance distance and a per-dimension simplified Kolmogorov-Smirnov
  term, weighted by the inverse of their values on batches drawn from the prior (Sec. 3), with
  the reconstruction weighted by 0.005 (appendix A.2.3).
- `rae` (Ghosh et al. 2020): beta |z|^2 / 2 and a decoder regularizer, L2 weight decay or the
  gradient penalty; sampled ex post with a GMM ("RAE + GMM").
- `wae` (Tolstikhin et al. 2018, WAE-MMD): lambda MMD(q(z), N(0, I)), inverse multiquadratic
  kernel.
- `aae` (Makhzani et al. 2016; WAE-GAN): a latent discriminator, a parameter group trained with
  binary cross-entropy; the encoder minimises the non-saturating -log D(z).
- `maskaae` (Mondal et al. 2020): a learnable mask alpha = 1 - exp(-m), m >= 0, on the code and
  on the prior, and a WGAN-GP critic on the masked codes against the masked prior.
- `flexae` (the slides' FlexAE): a learnable prior generator G(eps) and a WGAN-GP critic
  between the encoder's codes and G's: the generalized objective a + lambda b, term b minimised
  by the encoder and the generator alike.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxae import nets, priors, regularizers
from jaxae.models import Autoencoder, FittedState, ParamGroup, register

# Seed of the prior draws of an evaluation-mode call (`latent(x, None)`): deterministic. The key
# is made when it is used (`_key`): an array made at import would start JAX's backends when
# `jaxae.models` is imported, before `jax.distributed.initialize` can run.
EVAL_SEED = 0


def _key(key):
    """`key`, or for an evaluation-mode call (None) the fixed key of `EVAL_SEED`."""
    return jax.random.PRNGKey(EVAL_SEED) if key is None else key


class Regularized(Autoencoder):
    """A deterministic autoencoder with the papers' regularizer weights (see Units above).

    Subclasses set `settings` (their config section) and `_setup(options, rngs)`.
    """

    settings: dict = {}

    def __init__(self, head, arch: str = "dense", latent_dim: int = 10, *, seed: int = 0,
                 width: int = 0, **options):  # fmt: skip
        unknown = sorted(set(options) - set(self.settings))
        if unknown:
            raise ValueError(
                f"model kind {self.kind!r}: unknown settings {unknown}; its settings are "
                f"{sorted(self.settings)}"
            )
        opts = {**self.settings, **options}
        rngs = nnx.Rngs(params=seed)
        self._init_net(head, arch, latent_dim, rngs, width=width)
        self._setup(opts, rngs)

    def _setup(self, options: dict, rngs: nnx.Rngs) -> None:
        """Build what the model adds to its networks (critics, priors) from its settings."""

    def per_pixel(self, weight: float) -> float:
        """A weight in the papers' units (against the per-image sum of squared errors) in jaxae's
        (against the per-pixel mean): weight / D."""
        return float(weight) / self.head.dim

    def prior_sample(self, key, n: int):
        """n codes from the model's own prior: N(0, I) unless the model has another. [n, K]"""
        return jax.random.normal(key, (n, self.latent_dim))

    def _prior_batch(self, key, n: int):
        return self.prior_sample(_key(key), n)


def _broadcast(value, z):
    """A batch-level divergence as the per-example term the trainer averages: [B] copies."""
    return jnp.full((z.shape[0],), value)


def _count(kind: str, options: dict, name: str, minimum: int, what: str) -> int:
    """The integer setting `name` (>= minimum), or a ValueError naming it and the fix."""
    value = options[name]
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < minimum:
        raise ValueError(
            f"{kind} {name}={value!r}: {what} must be an integer >= {minimum}; set {kind}.{name} "
            f"to {minimum} or more"
        )
    return int(value)


def _positive(kind: str, options: dict, name: str, what: str, *, off: str = "") -> float:
    """The number setting `name` (finite, > 0), or a ValueError naming it. With `off` (what 0
    means, e.g. "a plain autoencoder"), 0 is allowed too: a weight that switches its term off.
    A negative weight would maximise its term, so it is refused either way."""
    value = options[name]
    number = isinstance(value, int | float | np.number) and not isinstance(value, bool)
    if not (number and math.isfinite(value) and (value >= 0 if off else value > 0)):
        bound = f">= 0 (0: {off})" if off else "> 0"
        raise ValueError(f"{kind} {name}={value!r}: {what} must be a finite number {bound}")
    return float(value)


def _critic(kind: str, options: dict, in_features: int, rngs: nnx.Rngs) -> nets.MLP:
    w = _count(kind, options, "critic_width", 1, "the critic's hidden width")
    layers = _count(kind, options, "critic_layers", 0, "the critic's number of hidden layers")
    return nets.MLP(in_features, (w,) * layers, 1, rngs=rngs)


def _critic_group(kind: str, options: dict, params: tuple = ("critic",)) -> ParamGroup:
    """The critic's parameter group: its loss method, steps and Adam settings."""
    steps = _count(kind, options, "critic_steps", 1,
                   "the critic's steps per autoencoder step (the critic ratio)")  # fmt: skip
    opt = (("learning_rate", float(options["critic_learning_rate"])),
           ("b1", float(options["critic_b1"])))  # fmt: skip
    return ParamGroup(params, "critic_terms", steps, opt)


_CRITIC = {"critic_width": 512, "critic_layers": 3, "critic_steps": 1,
           "critic_learning_rate": 5e-4, "critic_b1": 0.5}  # fmt: skip


def _prior_means(value, d: int) -> np.ndarray:
    """The GMM-DAE setting `prior_means` as [K, d] float32, or a ValueError saying the fix."""
    shape = f"[K, {d}]: K rows of {d} numbers (model.latent_dim), one mean per component"
    try:
        means = np.asarray(value, np.float32)
    except (TypeError, ValueError):
        raise ValueError(f"gmmdae prior_means={value!r} is not {shape}") from None
    if means.ndim != 2 or means.shape[1] != d:
        raise ValueError(
            f"gmmdae prior_means has shape {means.shape}, not {shape}; give means of the latent "
            "dimension, or change model.latent_dim"
        )
    if not np.all(np.isfinite(means)):
        raise ValueError("gmmdae prior_means hold NaN or infinite values: give finite means")
    return means


def _prior_weights(value, k: int) -> np.ndarray:
    """The GMM-DAE setting `prior_weights` for K means ((): equal), or a ValueError."""
    if not value:
        return np.full(k, 1.0 / k, np.float32)
    try:
        w = np.asarray(value, np.float64)
    except (TypeError, ValueError):
        w = np.zeros((0,))
    if w.shape != (k,):
        raise ValueError(
            f"gmmdae prior_weights={value!r}: give one mixture weight per row of prior_means "
            f"({k}), or none (equal weights)"
        )
    if not np.all(np.isfinite(w)) or np.any(w < 0) or abs(w.sum() - 1.0) > 1e-5:
        raise ValueError(
            f"gmmdae prior_weights={value!r} sum to {w.sum():.6g}: mixture weights must be "
            ">= 0 and sum to one; normalise them (w / sum(w)), or leave them empty for equal "
            "weights"
        )
    return w.astype(np.float32)


@register("gmmdae")
class GMMDAE(Regularized):
    """GMM-DAE (Saseendran et al. 2021): a deterministic AE whose codes match a GMM prior.

    Loss, the paper's divided by 0.005 D (see the module's Units):
        sum_i (x_i - x^_i)^2 / D + (lambda_cov L_cov + lambda_KS L_KS) / (0.005 D)
    with L_cov the mean squared distance between the batch covariance of the codes and the
    mixture's (`regularizers.covariance_distance`), L_KS the simplified Kolmogorov-Smirnov term
    (`regularizers.ks_distance`), and lambda_r = 1 / E[L_r] over `weight_batches` batches of
    `weight_batch` codes drawn from the prior itself (Sec. 3; `regularizers.prior_weights`).
    The prior: `components` equally weighted components with one-hot means and std
    `prior_std` (appendix A.2.3), or `prior_means` (K rows of d) with `prior_weights` (empty:
    equal). `use_cov` / `use_ks` switch a term off (the appendix's Figure 3 ablation).
    """

    settings = {"components": 10, "prior_std": 1.0, "prior_means": (), "prior_weights": (),
                "recon_weight": 0.005, "weight_batch": 100, "weight_batches": 100,
                "use_cov": True, "use_ks": True}  # fmt: skip

    def _setup(self, options, rngs):
        d = self.latent_dim
        if not options["use_cov"] and not options["use_ks"]:
            raise ValueError(
                "gmmdae use_cov and use_ks are both off, so no regularizer is left: turn one on "
                "(the paper uses both)"
            )
        self.recon_weight = _positive("gmmdae", options, "recon_weight",
                                      "the reconstruction's weight")  # fmt: skip
        std = _positive("gmmdae", options, "prior_std", "the components' standard deviation")
        sets = "that set the term weights"
        weight_batch = _count(
            "gmmdae", options, "weight_batch", 2, f"the size of the prior batches {sets}"
        )
        weight_batches = _count(
            "gmmdae", options, "weight_batches", 1, f"the number of prior batches {sets}"
        )
        if options["prior_means"]:
            means = _prior_means(options["prior_means"], d)
            k = len(means)
            w = _prior_weights(options["prior_weights"], k)
            prior = priors.gmm(w, means, np.full((k, d), std, np.float32))
        else:
            if options["prior_weights"]:
                raise ValueError(
                    "gmmdae prior_weights need prior_means (one weight per mean); the one-hot "
                    "prior of `components` is equally weighted: leave prior_weights empty"
                )
            k = options["components"]
            if isinstance(k, bool) or not isinstance(k, int | np.integer) or not 1 <= k <= d:
                raise ValueError(
                    f"gmmdae components={k!r}: the prior's components are centred on the one-hot "
                    f"vectors e_1..e_K of the latent space R^{d}, so components must be an "
                    f"integer in 1..{d} (model.latent_dim); lower components, raise "
                    "model.latent_dim, or give the means (prior_means)"
                )
            prior = priors.onehot_gmm(int(k), d, std)
        self.use = tuple(t for t in ("cov", "ks") if options[f"use_{t}"])
        stds = jnp.sqrt(jnp.diagonal(prior.covs, axis1=-2, axis2=-1))
        self.prior_w = FittedState(jnp.asarray(prior.weights, jnp.float32))
        self.prior_mu = FittedState(jnp.asarray(prior.means, jnp.float32))
        self.prior_sigma = FittedState(jnp.asarray(stds, jnp.float32))
        args = (self.prior_w[...], self.prior_mu[...], self.prior_sigma[...])
        fns = {t: functools.partial(self._term_fn(t), w=args[0], mu=args[1], sigma=args[2])
               for t in self.use}  # fmt: skip
        weights = regularizers.prior_weights(
            fns, *args, batch_size=weight_batch, key=jax.random.PRNGKey(1),
            num_batches=weight_batches,
        )  # fmt: skip
        self.term_weights = FittedState(jnp.asarray([weights[t] for t in self.use], jnp.float32))

    @staticmethod
    def _term_fn(term):
        fn = {"cov": regularizers.covariance_distance, "ks": regularizers.ks_distance}[term]
        return lambda z, w, mu, sigma: fn(z, w, mu, sigma)

    @property
    def prior(self) -> priors.GMM:
        """The mixture prior as a `priors.GMM` (diagonal covariances)."""
        covs = jax.vmap(jnp.diag)(self.prior_sigma[...] ** 2)
        return priors.GMM(self.prior_w[...], self.prior_mu[...], covs)

    def latent(self, x, key=None):
        """The code and the weighted L_cov and L_KS, each broadcast to [B]."""
        z = self.encode(x)
        args = (self.prior_w[...], self.prior_mu[...], self.prior_sigma[...])
        scale = 1.0 / (self.recon_weight * self.head.dim)
        out = {}
        for i, t in enumerate(self.use):
            value = self._term_fn(t)(z, *args)
            out[t] = _broadcast(scale * self.term_weights[...][i] * value, z)
        return z, out

    def prior_sample(self, key, n: int):
        """n codes from the mixture prior. [n, K]"""
        return self.prior.sample(key, n)

    def assign(self, x):
        """The mixture component each image's code is most probably from (the paper's
        clustering, appendix A.4): [B] ints."""
        return self.prior.assign(self.encode(x))


class PowerIterate(nnx.Variable):
    """The power iteration's estimates of the leading singular vectors of the spectrally
    normalised kernels: model state, updated by each train-mode call, never trained."""


def _path_keys(path) -> tuple:
    """A `jax.tree_util` key path as plain keys, without the Variable's trailing 'value'."""
    keys = tuple(getattr(k, "key", getattr(k, "name", getattr(k, "idx", None))) for k in path)
    return keys[:-1] if keys and keys[-1] == "value" else keys


def _unit(v):
    return v / (jnp.linalg.norm(v) + 1e-12)


@register("rae")
class RAE(Regularized):
    """RAE (Ghosh et al. 2020): beta |z|^2 / 2 plus a decoder regularizer, per example:
    ``regularizer='l2'``: lambda |theta_dec|^2 (weight decay of the decoder's parameters); 'gp':
    lambda |grad_z sum D(z)|^2 (the authors' gradient penalty); 'sn': spectral normalisation of
    every decoder kernel (Miyato et al. 2018: W / sigma(W), sigma by one power iteration per
    train-mode call, its vector kept as model state), which adds no loss term. Sampled ex post
    ("RAE + GMM": `jaxae.priors`, sampler 'gmm'). Defaults: pythae's (embedding weight 1e-4,
    decoder weight 1e-7, in the papers' units)."""

    settings = {"code_weight": 1e-4, "regularizer": "l2", "decoder_weight": 1e-7}

    def _setup(self, options, rngs):
        if options["regularizer"] not in ("l2", "gp", "sn"):
            raise ValueError(
                f"rae regularizer {options['regularizer']!r}: choose 'l2' (decoder weight decay),"
                " 'gp' (decoder gradient penalty) or 'sn' (spectral normalisation)"
            )
        self.regularizer = options["regularizer"]
        beta = _positive("rae", options, "code_weight", "the code penalty's weight beta",
                         off="no code penalty")  # fmt: skip
        lam = _positive("rae", options, "decoder_weight", "the decoder regularizer's weight",
                        off="no decoder regularizer; 'sn' uses none")  # fmt: skip
        self.code_weight, self.decoder_weight = self.per_pixel(beta), self.per_pixel(lam)
        if self.regularizer == "sn":
            decoder = set(self.net.decoder_layers)
            kernels = [(tuple(path), node[...].shape[-1]) for path, node in nnx.iter_graph(self.net)
                       if isinstance(node, nnx.Param) and path[-1] == "kernel"
                       and path[0] in decoder]  # fmt: skip
            self.sn_paths = tuple(p for p, _ in kernels)
            self.sn_sizes = tuple(n for _, n in kernels)
            u = jax.random.normal(rngs.params(), (sum(self.sn_sizes),))
            self.sn_u = PowerIterate(u)
            # flipped by `model.eval()` (nnx's train/eval switch), like BatchNorm's: eval-mode
            # calls leave the power iteration's vector alone
            self.use_running_average = False

    def spectral_norms(self):
        """{kernel path: sigma}: the power iteration's estimate of each decoder kernel's largest
        singular value (its kernel reshaped to [inputs, outputs]); 'sn' only."""
        _, sigmas = self._normalised_kernels()
        return dict(zip(self.sn_paths, sigmas, strict=True))

    def _normalised_kernels(self):
        """(params of the network with every decoder kernel divided by its sigma, [sigma]); in
        train mode the power iteration's vectors are updated."""
        graphdef, params, rest = nnx.split(self.net, nnx.Param, ...)
        index = {p: i for i, p in enumerate(self.sn_paths)}
        offsets = np.cumsum((0, *self.sn_sizes))
        u_all, new_u, sigmas = self.sn_u[...], [None] * len(index), [None] * len(index)

        def normalise(path, leaf):
            i = index.get(_path_keys(path))
            if i is None:
                return leaf
            w = leaf.reshape(-1, leaf.shape[-1])  # [inputs, outputs]
            u = u_all[offsets[i] : offsets[i + 1]]
            v = jax.lax.stop_gradient(_unit(w @ u))
            u = jax.lax.stop_gradient(_unit(w.T @ v))
            sigmas[i], new_u[i] = v @ w @ u, u
            return leaf / sigmas[i]

        params = jax.tree_util.tree_map_with_path(normalise, params)
        if not self.use_running_average:
            self.sn_u[...] = jnp.concatenate(new_u)
        return (graphdef, params, rest), sigmas

    def decode(self, z):
        """Codes [B, K] -> raw [B, P]; with 'sn', through the spectrally normalised decoder."""
        if self.regularizer != "sn":
            return super().decode(z)
        (graphdef, params, rest), _ = self._normalised_kernels()
        net = nnx.merge(graphdef, params, rest)
        out = net.decode(z).reshape(z.shape[0], -1)
        if not self.use_running_average:  # the decoder's BatchNorm statistics of this call
            nnx.update(self.net, nnx.state(net, nnx.BatchStat))
        return out

    def latent(self, x, key=None):
        """The code, its penalty and the decoder's (none with 'sn'), each [B]."""
        z = self.encode(x)
        out = {"code": self.code_weight * regularizers.code_penalty(z)}
        if self.regularizer == "gp":
            # differentiated through a copy of the decoder: a BatchNorm decoder updates its
            # statistics in the reconstruction's pass, never inside this gradient
            graphdef, state = nnx.split(self.net)
            decode = lambda v: nnx.merge(graphdef, state, copy=True).decode(v)  # noqa: E731
            penalty = regularizers.decoder_gradient_penalty(decode, z)
            out["decoder_gp"] = self.decoder_weight * penalty
        elif self.regularizer == "l2":
            layers = {name: getattr(self.net, name) for name in self.net.decoder_layers}
            l2 = regularizers.l2_penalty(nnx.state(layers, nnx.Param))
            out["decoder_l2"] = _broadcast(self.decoder_weight * l2, z)
        return z, out


@register("wae")
class WAE(Regularized):
    """WAE-MMD (Tolstikhin et al. 2018, Alg. 2): lambda MMD^2(codes, N(0, I) samples) with the
    inverse multiquadratic kernel, C = 2 K kernel_scale^2 (`regularizers.imq_mmd`); the paper's
    MNIST lambda = 10."""

    settings = {"weight": 10.0, "kernel_scale": 1.0}

    def _setup(self, options, rngs):
        lam = _positive("wae", options, "weight", "the MMD's weight", off="a plain autoencoder")
        self.weight = self.per_pixel(lam)
        self.kernel_scale = _positive("wae", options, "kernel_scale",
                                      "the IMQ kernel's scale (the prior's std)")  # fmt: skip

    def latent(self, x, key=None):
        """The code and lambda MMD^2 against a fresh prior batch, broadcast to [B]."""
        z = self.encode(x)
        p = self._prior_batch(key, z.shape[0])
        mmd = regularizers.imq_mmd(z, p, scale=self.kernel_scale)
        return z, {"mmd": _broadcast(self.weight * mmd, z)}


@register("aae")
class AAE(Regularized):
    """The adversarial autoencoder / WAE-GAN (Makhzani et al. 2016; Tolstikhin et al. 2018,
    Alg. 1): a discriminator on the codes (an MLP, ``critic_layers`` x ``critic_width`` ReLU,
    its own parameter group and Adam), trained to tell prior samples from codes by binary
    cross-entropy ``critic_steps`` times per iteration; the encoder minimises lambda -log D(z)
    (the non-saturating form). WAE-GAN's MNIST settings: lambda = 1, critic Adam 5e-4 with
    beta1 = 0.5."""

    settings = {"weight": 1.0, **_CRITIC}

    def _setup(self, options, rngs):
        lam = _positive("aae", options, "weight", "the adversarial term's weight",
                        off="a plain autoencoder")  # fmt: skip
        self.weight = self.per_pixel(lam)
        self.critic = _critic(self.kind, options, self.latent_dim, rngs)
        self._groups = {"autoencoder": ParamGroup(), "critic": _critic_group(self.kind, options)}

    def groups(self):
        """The autoencoder (every parameter but the critic's) and the critic."""
        return dict(self._groups)

    def latent(self, x, key=None):
        """The code and lambda -log D(z), [B]."""
        z = self.encode(x)
        return z, {"adversarial": self.weight * regularizers.gan_generator_loss(self.logit(z))}

    def logit(self, z):
        """The discriminator's logit that z is a prior sample: [B]."""
        return self.critic(z)[:, 0]

    def critic_terms(self, x, key):
        """The discriminator's cross-entropy on a prior batch (real) and the codes (fake)."""
        z = jax.lax.stop_gradient(self.encode(x))
        p = self._prior_batch(key, z.shape[0])
        loss = regularizers.gan_critic_loss(self.logit(p), self.logit(z))
        return {"loss": loss, "bce": loss}


def _wgan_critic_terms(critic, real, fake, key, gp_weight):
    """WGAN-GP critic terms (Gulrajani et al. 2017): C(fake) - C(real) + w (|grad C| - 1)^2."""
    score = lambda v: critic(v)[:, 0]  # noqa: E731
    w = regularizers.wgan_critic_loss(score(real), score(fake))
    gp = regularizers.gradient_penalty(score, real, fake, key)
    return {"loss": w + gp_weight * gp, "wasserstein": -w, "gp": gp}


def _wgan_weights(kind: str, options: dict, per_pixel) -> tuple[float, float]:
    """The adversarial term's weight (in jaxae's units) and the critic's gradient-penalty weight,
    both > 0: the mask or the learned prior trains through the adversarial term only, and a
    WGAN critic without its penalty is not Lipschitz (its estimate grows without bound)."""
    weight = _positive(kind, options, "weight", "the adversarial term's weight")
    gp = _positive(kind, options, "gp_weight", "the critic's gradient-penalty weight")
    return per_pixel(weight), gp


_WGAN = {**_CRITIC, "critic_steps": 5, "critic_learning_rate": 1e-4, "gp_weight": 10.0}


@register("maskaae")
class MaskAAE(Regularized):
    """MaskAAE (Mondal et al. 2020; the slides' Figure 4): a learnable mask alpha = 1 - exp(-m)
    (m = softplus(raw) >= 0) multiplies the code and the prior sample alike; a WGAN-GP critic
    tells masked prior samples (real) from masked codes (fake). The encoder and the mask
    minimise lambda (C(alpha eps) - C(alpha E(x))), the critic's Wasserstein estimate (the mask
    acts on both sides). `active_dims` and `nac` report the slides' Table 2."""

    settings = {"weight": 1.0, "mask_init": 1.0, **_WGAN}

    def _setup(self, options, rngs):
        self.weight, self.gp_weight = _wgan_weights(self.kind, options, self.per_pixel)
        m0 = float(options["mask_init"])
        if not m0 > 0:
            raise ValueError(f"maskaae mask_init must be > 0 (m, alpha = 1 - exp(-m)), got {m0}")
        raw = np.log(np.expm1(m0))  # softplus^-1
        self.mask_raw = nnx.Param(jnp.full((self.latent_dim,), raw, jnp.float32))
        self.critic = _critic(self.kind, options, self.latent_dim, rngs)
        self._groups = {"autoencoder": ParamGroup(), "critic": _critic_group(self.kind, options)}

    def groups(self):
        """The autoencoder with its mask, and the critic."""
        return dict(self._groups)

    def alpha(self):
        """The mask alpha = 1 - exp(-m) [K]."""
        return regularizers.mask(jax.nn.softplus(self.mask_raw[...]))

    def encode(self, x):
        """The masked code alpha * E(x) [B, K]."""
        return self.alpha() * self.net.encode(x)

    def prior_sample(self, key, n: int):
        """Masked prior samples alpha * eps, eps ~ N(0, I). [n, K]"""
        return self.alpha() * jax.random.normal(key, (n, self.latent_dim))

    def latent(self, x, key=None):
        """The masked code and lambda (C(alpha eps) - C(alpha E(x))), [B]."""
        z = self.encode(x)
        p = self._prior_batch(key, z.shape[0])
        score = lambda v: self.critic(v)[:, 0]  # noqa: E731
        return z, {"adversarial": self.weight * (score(p) - score(z))}

    def critic_terms(self, x, key):
        """The WGAN-GP critic's terms on masked prior samples and masked codes."""
        z = jax.lax.stop_gradient(self.encode(x))
        k_prior, k_gp = jax.random.split(_key(key))
        p = jax.lax.stop_gradient(self.prior_sample(k_prior, z.shape[0]))
        return _wgan_critic_terms(self.critic, p, z, k_gp, self.gp_weight)


@register("flexae")
class FlexAE(Regularized):
    """FlexAE (the slides' generalized objective): a learnable prior p_psi, the push-forward of
    eps ~ N(0, I_m') (m' = ``prior_noise``, 0: K) through an MLP generator G, matched to the
    encoder's codes through a WGAN-GP critic C: the critic maximises E_q[C] - E_p[C] (codes
    real, generated fake), and term b, lambda (E_q[C(E(x))] - E_p[C(G(eps))]), is minimised by
    the encoder (first half, with term a) and by the generator (second half, its own group).
    Ex post, the model's prior is G (`prior_sample`)."""

    settings = {"weight": 1.0, "prior_noise": 0, "prior_width": 256, "prior_layers": 2,
                "prior_learning_rate": 1e-4, **_WGAN}  # fmt: skip

    def _setup(self, options, rngs):
        self.weight, self.gp_weight = _wgan_weights(self.kind, options, self.per_pixel)
        noise = _count("flexae", options, "prior_noise", 0, "the generator's input dimension")
        self.noise_dim = noise or self.latent_dim
        if self.noise_dim < self.latent_dim:
            raise ValueError(
                f"flexae prior_noise={noise}: the generator's input needs m' >= K = "
                f"{self.latent_dim} (the latent dimension); set flexae.prior_noise to 0 (m' = K) "
                f"or to at least {self.latent_dim}"
            )
        w = _count("flexae", options, "prior_width", 1, "the prior generator's hidden width")
        layers = _count("flexae", options, "prior_layers", 0,
                        "the prior generator's number of hidden layers")  # fmt: skip
        self.prior = nets.MLP(self.noise_dim, (w,) * layers, self.latent_dim, rngs=rngs)
        self.critic = _critic(self.kind, options, self.latent_dim, rngs)
        prior_opt = (("learning_rate", float(options["prior_learning_rate"])),
                     ("b1", float(options["critic_b1"])))  # fmt: skip
        self._groups = {"autoencoder": ParamGroup(),
                        "prior": ParamGroup(("prior",), "prior_terms", 1, prior_opt),
                        "critic": _critic_group(self.kind, options)}  # fmt: skip

    def groups(self):
        """The autoencoder, the prior generator and the critic."""
        return dict(self._groups)

    def prior_sample(self, key, n: int):
        """G(eps), eps ~ N(0, I_m'): [n, K]"""
        return self.prior(jax.random.normal(key, (n, self.noise_dim)))

    def _score(self, v):
        return self.critic(v)[:, 0]

    def latent(self, x, key=None):
        """The code and the encoder's half of term b, lambda C(E(x)), [B]."""
        z = self.encode(x)
        return z, {"adversarial": self.weight * self._score(z)}

    def prior_terms(self, x, key):
        """The generator's half of term b: -lambda C(G(eps)), [B]."""
        g = self.prior_sample(_key(key), x.shape[0])
        loss = -self.weight * self._score(g)
        return {"loss": loss, "adversarial": loss}

    def critic_terms(self, x, key):
        """The WGAN-GP critic's terms on the codes (real) and the generator's samples (fake)."""
        z = jax.lax.stop_gradient(self.encode(x))
        k_prior, k_gp = jax.random.split(_key(key))
        g = jax.lax.stop_gradient(self.prior_sample(k_prior, z.shape[0]))
        return _wgan_critic_terms(self.critic, z, g, k_gp, self.gp_weight)
