"""The PAE experiments' pieces that need no training: the beta-VAE of Eq. 15, the config's
flow and beta-VAE fields, the OoD script's outlier files and rates, and the Figure 5 chart."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from PIL import Image

from experiments import pae_ood
from jaxae import config as jconfig
from jaxae import data as jdata
from jaxae import models, plots


def test_beta_vae_regularizer_is_eq15():
    spec = {"kind": "vae", "head": "vae", "latent_dim": 3, "image_shape": [4, 4, 1]}
    x = jax.random.uniform(jax.random.PRNGKey(0), (5, 4, 4, 1))
    plain = models.build(spec)
    beta = models.build({**spec, "beta": 100.0, "capacity": 15.0})
    q = plain.posterior(x)
    mu, s = q.mean(), q.stddev()
    kl = 0.5 * jnp.sum(mu**2 + s**2 - 1 - 2 * jnp.log(s), -1)  # closed form KL(q || N(0, I))
    np.testing.assert_allclose(plain.latent(x)[1]["kl"], kl, rtol=1e-5)
    np.testing.assert_allclose(beta.latent(x)[1]["beta_kl"], 100 * jnp.abs(kl - 15), rtol=1e-5)
    assert beta.spec["beta"] == 100.0 and "beta" not in plain.spec
    assert models.build(beta.spec).spec == beta.spec
    with pytest.raises(ValueError, match="beta > 0"):
        models.build({**spec, "beta": 0.0})


def test_infogan_vae_has_a_2k_posterior_and_two_values_per_pixel():
    spec = {"kind": "vae", "head": "vae", "arch": "infogan", "latent_dim": 4,
            "image_shape": [28, 28, 1]}  # fmt: skip

    def build_and_apply():  # by shapes only (nnx.eval_shape): nothing initialised or computed
        m = models.build(spec)
        z, reg = m.latent(jnp.zeros((2, 28, 28, 1)), jax.random.PRNGKey(0))
        return z, reg, m.decode(z)

    z, reg, raw = nnx.eval_shape(build_and_apply)
    assert z.shape == (2, 4) and reg["kl"].shape == (2,)
    assert raw.shape == (2, 2 * 784)


@pytest.mark.parametrize(
    "field, value, message",
    [("flow.kind", "glow", "flow.kind"), ("flow.epochs", -1, "flow.epochs"),
     ("flow.patience", 0, "flow.patience"), ("flow.learning_rate", 0.0, "flow.learning_rate"),
     ("model.beta", 0.0, "model.beta"), ("model.capacity", -1.0, "model.capacity")],
)  # fmt: skip
def test_config_names_bad_flow_and_beta_fields(field, value, message):
    c = jconfig.default()
    section, key = field.split(".")
    c[section][key] = value
    with pytest.raises(ValueError, match=message):
        jconfig.validate(c)


def test_flow_fields_do_not_block_resuming_the_autoencoder():
    assert {"flow.epochs", "flow.kind", "flow.patience"} <= set(jconfig.RESUMABLE)


def test_extra_outlier_files(tmp_path):
    """--extra takes any source, made the Fashion-MNIST images' shape (28 x 28 grey)."""
    good = tmp_path / "good.npz"
    np.savez(good, images=np.zeros((3, 28, 28), np.uint8))
    name, images = pae_ood.load_outlier(f"mine={good}", (28, 28, 1))
    assert name == "mine" and images.shape == (3, 28, 28, 1)
    rgb = tmp_path / "rgb.npz"  # 32 x 32 colour floats in [0, 1]: resized and made grey
    np.savez(rgb, images=np.full((2, 32, 32, 3), 0.5, np.float32))
    name, images = pae_ood.load_outlier(str(rgb), (28, 28, 1))
    assert name == "rgb" and images.shape == (2, 28, 28, 1)
    np.testing.assert_allclose(images, 0.5, atol=1e-6)
    cases = {
        "noimages.npz": ({"pixels": np.zeros((3, 28, 28), np.uint8)}, "no array 'images'"),
        "f255.npz": ({"images": np.full((3, 28, 28), 9.0, np.float32)}, "divide them by 255"),
        "empty.npz": ({"images": np.zeros((0, 28, 28), np.uint8)}, "empty"),
    }
    for fname, (arrays, message) in cases.items():
        np.savez(tmp_path / fname, **arrays)
        with pytest.raises(ValueError, match=f"--outlier x: .*{message}"):
            pae_ood.load_outlier(f"x={tmp_path / fname}", (28, 28, 1))
    with pytest.raises(FileNotFoundError, match="no such file"):
        pae_ood.load_outlier(f"x={tmp_path / 'missing.npz'}", (28, 28, 1))
    with pytest.raises(ValueError, match="NAME=SOURCE"):
        pae_ood.load_outlier(f"a/b={good}", (28, 28, 1))
    obj = tmp_path / "obj.npz"
    np.savez(obj, images=np.array([None, 1], dtype=object))
    with pytest.raises(ValueError, match="pickle"):  # user files are data, never code
        pae_ood.load_outlier(f"x={obj}", (28, 28, 1))


def test_read_npz_refuses_pickles_and_names_the_file(tmp_path):
    import pickle

    good = tmp_path / "good.npz"
    np.savez(good, images=np.ones((2, 3), np.uint8), labels=np.arange(2))
    arrays = jdata.read_npz(good, "--extra x")
    assert sorted(arrays) == ["images", "labels"] and arrays["images"].sum() == 6
    obj = tmp_path / "obj.npz"
    np.savez(obj, images=np.array([None, 1], dtype=object))
    (tmp_path / "pickle.npz").write_bytes(pickle.dumps({"images": 1}))
    np.save(tmp_path / "one.npy", np.zeros(3))
    (tmp_path / "text.npz").write_text("not a zip")
    (tmp_path / "broken.npz").write_bytes(b"PK\x03\x04 a truncated archive")
    cases = {
        obj: f"{obj} holds an object array 'images' .*refused: user files are data, never code",
        tmp_path / "pickle.npz": r"is not an .npz archive \(it is a Python pickle\).*refused",
        tmp_path / "one.npy": r"one.npy is not an .npz archive \(it holds one NumPy array",
        tmp_path / "text.npz": "text.npz is not an .npz archive",
        tmp_path / "broken.npz": "broken.npz cannot be read as an .npz archive",
    }
    for path, message in cases.items():
        with pytest.raises(ValueError, match=message):
            jdata.read_npz(path, "--extra x")
    with pytest.raises(FileNotFoundError, match=f"--extra x: no file {tmp_path / 'absent.npz'}"):
        jdata.read_npz(tmp_path / "absent.npz", "--extra x")
    with pytest.raises(ValueError, match=f"--outlier x: {obj}: .*never code"):  # the script's
        pae_ood.load_outlier(f"x={obj}", (28, 28, 1))


def test_fpr_ratio_at_5_percent_false_negatives():
    inl = np.arange(100.0)  # outlierness of the inliers: 0..99
    outl = np.arange(50.0, 150.0)  # outliers 50..149: the 5% quantile is 54.95
    # TPR = 0.95 (95 of 100 outliers >= 54.95), FPR = 45 / 100 inliers >= 54.95
    assert pae_ood.fpr_ratio(inl, outl) == pytest.approx(0.95 / 0.45)
    assert pae_ood.fpr_ratio(inl, outl + 1000) == float("inf")


def test_line_chart_writes_a_png(tmp_path):
    path = plots.line_chart({"a": ([4, 8, 16], [1.0, 10.0, 100.0]), "b": ([4, 16], [2.0, 3.0])},
                            tmp_path / "c.png", log_y=True, xlabel="K")  # fmt: skip
    img = np.asarray(Image.open(path))
    assert img.shape == (360, 520, 3) and (img < 250).any()
    with pytest.raises(ValueError, match="no finite points"):
        plots.line_chart({"a": ([1], [float("nan")])}, tmp_path / "d.png")


def test_vpae_config_reads_head_k_and_arch():
    from experiments.configs import vpae

    got = [(c.model.head, c.model.k, c.model.arch) for c in map(vpae.get_config, (
        "t_diag", "t_diag,10", "matrix_normal_identity,1,cnn"))]  # fmt: skip
    assert got == [
        ("t_diag", 1, "mlp"),
        ("t_diag", 10, "mlp"),
        ("matrix_normal_identity", 1, "cnn"),
    ]
