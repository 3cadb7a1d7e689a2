"""Tests for jaxae.inception: the FID InceptionV3 port against PyTorch's outputs (reference.npz),
the torch-equivalent resize, the batched/sharded embedding, weight lookup and validation, and the
converter's mapping from pytorch-fid's state dict (no torch needed).

One jitted network (module fixture) serves every test that runs it: ~25 s on one core.
"""

import functools
import sys

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxae import inception, parallel

README_SHA256 = "ef979f6ae24b9ad730a072ab561c5236ac40d5931cfb4bc72a3c1b6300774079"


@pytest.fixture(scope="module")
def weights_file():
    try:
        return inception.weights_path()
    except FileNotFoundError as e:
        pytest.skip(f"FID Inception weights absent on this machine: {e}")


@pytest.fixture(scope="module")
def weights(weights_file):
    return inception.load_weights(weights_file)


@pytest.fixture(scope="module")
def params(weights):
    return inception.fold_params(weights)


@pytest.fixture(scope="module")
def reference(weights_file):
    path = weights_file.parent / "reference.npz"
    if not path.is_file():
        pytest.skip(f"{path} absent")
    with np.load(path) as f:
        return {k: f[k] for k in f.files}


@pytest.fixture(scope="module")
def net():
    """The network with its block means, jitted once for the whole module (batch 4)."""
    return jax.jit(functools.partial(inception.apply, block_means=True))


@pytest.fixture(scope="module")
def reference_run(net, params, reference):
    feats, means = net(params, jnp.asarray(reference["inputs"].transpose(0, 2, 3, 1)))
    return np.asarray(feats), {k: np.asarray(v) for k, v in means.items()}


# ---------------------------------------------------------------------------------------------
# Port equivalence


def test_port_matches_torch_features(reference_run, reference):
    feats, means = reference_run
    assert feats.shape == (4, 2048) and feats.dtype == np.float32
    err = np.abs(feats - reference["features"]).max()
    print(f"features: max abs error {err:.2e} (max |value| {np.abs(reference['features']).max()})")
    assert err < 1e-4
    for block in inception.BLOCKS:  # localises a divergence, should this ever fail
        np.testing.assert_allclose(means[block], reference[f"act_mean.{block}"], atol=1e-4)


def test_preprocessing_matches_torch_interpolate(reference):
    images = reference["images_uint8"][..., None]  # [4, 28, 28, 1]
    target = reference["inputs"].transpose(0, 2, 3, 1)  # [4, 299, 299, 3]
    for x in (images / 255, images):  # float in [0, 1], and uint8 (divided on the device)
        out = np.asarray(inception.to_inception_input(x))
        assert out.shape == (4, 299, 299, 3) and out.dtype == np.float32
        err = np.abs(out - target).max()
        print(f"preprocessing ({x.dtype}): max abs error {err:.2e}")
        assert err < 1e-6
    rgb = np.repeat(images / 255, 3, axis=-1)  # RGB input with equal channels: the same
    np.testing.assert_allclose(inception.to_inception_input(rgb), target, atol=1e-6)


def test_resize_matrix_matches_jax_image_resize():
    x = np.random.default_rng(0).random((2, 32, 20, 3), np.float32)
    ours = inception.preprocess(jnp.asarray(x))
    theirs = jax.image.resize(x, (2, 299, 299, 3), "bilinear", antialias=False) * 2 - 1
    np.testing.assert_allclose(ours, theirs, atol=2e-6)
    np.testing.assert_allclose(inception.resize_matrix(20).sum(1), 1, rtol=1e-6)


def test_pools_exclude_padding_and_match_reduce_window():
    x = jnp.arange(2 * 5 * 4 * 3, dtype=jnp.float32).reshape(2, 5, 4, 3) ** 1.5
    avg = np.asarray(inception._avg_pool_excl(x))
    xn = np.asarray(x)
    np.testing.assert_allclose(avg[:, 0, 0], xn[:, :2, :2].mean((1, 2)), rtol=1e-6)  # corner: 4
    np.testing.assert_allclose(avg[:, 0, 2], xn[:, :2, 1:4].mean((1, 2)), rtol=1e-6)  # edge: 6
    np.testing.assert_allclose(avg[:, 2, 1], xn[:, 1:4, :3].mean((1, 2)), rtol=1e-6)  # inside: 9
    for stride, pad in ((2, 0), (1, 1)):
        window = jax.lax.reduce_window(
            x, -jnp.inf, jax.lax.max, (1, 3, 3, 1), (1, stride, stride, 1),
            ((0, 0), (pad, pad), (pad, pad), (0, 0)),
        )  # fmt: skip
        np.testing.assert_array_equal(inception._max_pool(x, stride, pad), window)


# ---------------------------------------------------------------------------------------------
# Batched, sharded embedding


def test_features_batched_sharded_equals_direct_call(net, params, reference, monkeypatch):
    assert jax.device_count() == 4  # tests/conftest.py
    images = reference["images_uint8"][..., None]
    images = np.concatenate([images, images[:2, :, ::-1]])  # 6 images: batches of 4 and 2 + 2 pad
    mesh = parallel.data_mesh()
    inception._embed_fn.cache_clear()  # a fresh jit, so that its traces are counted here
    monkeypatch.setattr(inception, "apply", chex.assert_max_traces(inception.apply, n=1))
    out = inception.features(images, weights=params, batch_size=3, mesh=mesh, progress=False)
    assert out.shape == (6, 2048) and out.dtype == np.float32  # both batches: one trace
    direct = np.concatenate(
        [
            np.asarray(net(params, inception.to_inception_input(images[:4]))[0]),
            np.asarray(net(params, inception.to_inception_input(images[2:]))[0])[2:],
        ]
    )
    np.testing.assert_allclose(out, direct, atol=1e-5)
    # End to end, from uint8 pixels to PyTorch's features.
    np.testing.assert_allclose(out[:4], reference["features"], atol=1e-4)


@pytest.mark.parametrize(
    "images, match",
    [
        (np.zeros((2, 28, 28, 2)), "2 channels"),
        (np.zeros((2, 28, 28, 4), np.uint8), "4 channels"),
        (np.full((2, 28, 28, 1), np.nan), "NaN"),
        (np.full((2, 28, 28, 1), 1.5), "out of range"),
        (np.zeros((0, 28, 28, 1)), "empty"),
        (np.zeros((28, 28)), "rank"),
        (np.zeros((1, 2, 28, 28, 1)), "rank"),
    ],
)
def test_bad_images(images, match):
    with pytest.raises(ValueError, match=match):
        inception.check_input(images)
    with pytest.raises(ValueError, match=match):
        inception.features(images, weights={}, progress=False)  # fails before any weights


# ---------------------------------------------------------------------------------------------
# Weights: lookup, validation


def test_weights_file_is_the_documented_one(weights_file):
    assert inception.weights_sha256(weights_file) == README_SHA256


def test_missing_weights_file_says_how_to_get_it(monkeypatch, tmp_path):
    monkeypatch.setenv(inception.WEIGHTS_ENV, str(tmp_path / "nope.npz"))
    with pytest.raises(FileNotFoundError) as e:
        inception.load_weights()
    msg = str(e.value)
    assert "nope.npz" in msg and "JAXAE_INCEPTION_WEIGHTS" in msg
    assert "python -m jaxae.inception convert" in msg and "pt_inception-2015-12-05" in msg
    assert "default_1.pt" in msg


def test_weights_lookup_order(monkeypatch, tmp_path):
    monkeypatch.delenv(inception.WEIGHTS_ENV, raising=False)
    monkeypatch.setenv("JAXAE_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.chdir(tmp_path)
    # Nothing anywhere: every place is listed.
    monkeypatch.setattr(inception, "_SHARED_REL", inception._SHARED_REL.with_name("absent.npz"))
    with pytest.raises(FileNotFoundError) as e:
        inception.weights_path()
    for place in ("$JAXAE_DATA_DIR", "current directory", "repository"):
        assert place in str(e.value)
    # $JAXAE_DATA_DIR/inception/ comes first; an explicit path beats everything.
    in_data_dir = tmp_path / "data" / "inception" / inception.WEIGHTS_FILE
    in_data_dir.parent.mkdir(parents=True)
    in_data_dir.write_bytes(b"x")
    assert inception.weights_path() == in_data_dir
    explicit = tmp_path / "mine.npz"
    explicit.write_bytes(b"x")
    assert inception.weights_path(explicit) == explicit


def test_corrupt_weights_file(tmp_path, weights_file):
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"this is not a zip archive" * 100)
    truncated = tmp_path / "truncated.npz"
    with open(weights_file, "rb") as f:
        truncated.write_bytes(f.read(1 << 20))
    for path in (garbage, truncated):
        with pytest.raises(ValueError, match="corrupt") as e:
            inception.load_weights(path)
        assert path.name in str(e.value)


def test_weights_with_missing_key_or_wrong_shape(tmp_path, weights):
    small = tmp_path / "one_key.npz"
    np.savez(small, **{"net.layers.conv.weight": weights["net.layers.conv.weight"]})
    with pytest.raises(ValueError, match="missing key 'net.layers.conv.beta'"):
        inception.load_weights(small)
    bad = dict(weights)
    bad["net.layers.mixed_4.tower.conv_1.weight"] = np.zeros((128, 128, 7, 1), np.float32)
    with pytest.raises(ValueError, match=r"'net.layers.mixed_4.tower.conv_1.weight' has shape"):
        inception.check_weights(bad)
    with pytest.raises(ValueError, match="unexpected key 'extra'"):
        inception.check_weights({**weights, "extra": np.zeros(1)})


# ---------------------------------------------------------------------------------------------
# Converter


def pytorch_fid_state(weights, seed=0) -> dict[str, np.ndarray]:
    """A pytorch-fid-style state dict that converts back into `weights`: random positive batch-norm
    gammas with compensating kernels and means (the inverse of `convert_state_dict`'s fold),
    plus the classifier and the num_batches_tracked counters the converter must drop."""
    rng = np.random.default_rng(seed)
    state = {"fc.weight": np.zeros((1008, 2048), np.float32), "fc.bias": np.zeros(1008)}
    for module, name in inception.PYTORCH_FID_NAMES.items():
        w, beta, mean, var = (
            weights[f"net.layers.{name}.{s}"].astype(np.float64)
            for s in ("weight", "beta", "mean", "var")
        )
        gamma = rng.uniform(0.5, 2.0, size=beta.shape)
        state[f"{module}.conv.weight"] = w / gamma[:, None, None, None]
        state[f"{module}.bn.weight"] = gamma
        state[f"{module}.bn.bias"] = beta
        state[f"{module}.bn.running_mean"] = mean / gamma
        state[f"{module}.bn.running_var"] = var
        state[f"{module}.bn.num_batches_tracked"] = np.array(0)
    return state


def test_convert_pytorch_fid_state_dict(weights, net, reference):
    state = pytorch_fid_state(weights)
    assert len(state) == 2 + 94 * 6
    converted = inception.convert_state_dict(state)
    assert converted.keys() == weights.keys()
    for key, value in weights.items():
        assert converted[key].dtype == np.float32
        np.testing.assert_allclose(converted[key], value, rtol=1e-6, atol=1e-9, err_msg=key)
    # The converted weights give PyTorch's features (same compiled network, new params).
    feats, _ = net(inception.fold_params(converted), reference["inputs"].transpose(0, 2, 3, 1))
    np.testing.assert_allclose(feats, reference["features"], atol=1e-4)


def test_convert_torchscript_layout_is_identity(weights):
    converted = inception.convert_state_dict(weights)
    assert all(np.array_equal(converted[k], weights[k]) for k in weights)


def test_convert_rejects_unknown_and_missing_keys(weights):
    state = pytorch_fid_state(weights)
    with pytest.raises(ValueError, match="unknown key 'AuxLogits.conv0.conv.weight'"):
        inception.convert_state_dict({**state, "AuxLogits.conv0.conv.weight": np.zeros(1)})
    del state["Mixed_6c.branch7x7dbl_4.bn.running_var"]
    with pytest.raises(ValueError, match="missing key 'Mixed_6c.branch7x7dbl_4.bn.running_var'"):
        inception.convert_state_dict(state)
    imagenet = {**pytorch_fid_state(weights), "fc.weight": np.zeros((1000, 2048))}
    with pytest.raises(ValueError, match="ImageNet"):
        inception.convert_state_dict(imagenet)


def test_converter_without_torch_says_so(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` raises ImportError
    src = tmp_path / "pt_inception-2015-12-05-6726825d.pth"
    src.write_bytes(b"x")
    with pytest.raises(RuntimeError, match="needs PyTorch"):
        inception.main(["convert", str(src), str(tmp_path / "out.npz")])
    assert not (tmp_path / "out.npz").exists()
