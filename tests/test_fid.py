"""FID in JAX against PyTorch references (CPU, random weights).

torchvision cannot be installed beside the local torch build, so pytorch-fid does not import here.
The reference network below is therefore a PyTorch transcription of torchvision's ``Inception3``
blocks with pytorch-fid's FID patches (FIDInceptionA/C and FIDInceptionE_1 average-pool with
``count_include_pad=False``, FIDInceptionE_2 max-pools) and pytorch-fid's input handling; where pytorch-fid
*does* import, it is checked against the real ``pytorch_fid.inception.InceptionV3`` too.  The
Fréchet distance is compared with pytorch-fid's ``calculate_frechet_distance`` when importable, and
always with a direct transcription of it.
"""

from __future__ import annotations

import importlib.util
import warnings

import jax
import numpy as np
import pytest
import scipy.linalg

from scire_jax.apps import fid
from scire_jax.core.sharding import batch_mesh
from scire_jax.io.convert.inception import convert_inception_state_dict, load_inception_params
from scire_jax.models import inception

torch = pytest.importorskip("torch")
nn = torch.nn
F = torch.nn.functional

NUM_IMAGES, SIZE, BATCH = 3, 32, 2  # 3 images in batches of 2: the last batch is padded


# -- PyTorch reference network ----------------------------------------------------------------------


class RefConv(nn.Module):
    def __init__(self, cin, cout, **kwargs):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, bias=False, **kwargs)
        self.bn = nn.BatchNorm2d(cout, eps=0.001)

    def forward(self, x):
        return F.relu(self.bn(self.conv(x)))


def _avg3(x):
    return F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)


class RefA(nn.Module):
    def __init__(self, cin, pool_features):
        super().__init__()
        self.branch1x1 = RefConv(cin, 64, kernel_size=1)
        self.branch5x5_1 = RefConv(cin, 48, kernel_size=1)
        self.branch5x5_2 = RefConv(48, 64, kernel_size=5, padding=2)
        self.branch3x3dbl_1 = RefConv(cin, 64, kernel_size=1)
        self.branch3x3dbl_2 = RefConv(64, 96, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = RefConv(96, 96, kernel_size=3, padding=1)
        self.branch_pool = RefConv(cin, pool_features, kernel_size=1)

    def forward(self, x):
        b5 = self.branch5x5_2(self.branch5x5_1(x))
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([self.branch1x1(x), b5, b3, self.branch_pool(_avg3(x))], 1)


class RefB(nn.Module):
    def __init__(self, cin):
        super().__init__()
        self.branch3x3 = RefConv(cin, 384, kernel_size=3, stride=2)
        self.branch3x3dbl_1 = RefConv(cin, 64, kernel_size=1)
        self.branch3x3dbl_2 = RefConv(64, 96, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = RefConv(96, 96, kernel_size=3, stride=2)

    def forward(self, x):
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([self.branch3x3(x), b3, F.max_pool2d(x, kernel_size=3, stride=2)], 1)


class RefC(nn.Module):
    def __init__(self, cin, c7):
        super().__init__()
        self.branch1x1 = RefConv(cin, 192, kernel_size=1)
        self.branch7x7_1 = RefConv(cin, c7, kernel_size=1)
        self.branch7x7_2 = RefConv(c7, c7, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7_3 = RefConv(c7, 192, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = RefConv(cin, c7, kernel_size=1)
        self.branch7x7dbl_2 = RefConv(c7, c7, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = RefConv(c7, c7, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = RefConv(c7, c7, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = RefConv(c7, 192, kernel_size=(1, 7), padding=(0, 3))
        self.branch_pool = RefConv(cin, 192, kernel_size=1)

    def forward(self, x):
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        d = x
        for i in range(1, 6):
            d = getattr(self, f"branch7x7dbl_{i}")(d)
        return torch.cat([self.branch1x1(x), b7, d, self.branch_pool(_avg3(x))], 1)


class RefD(nn.Module):
    def __init__(self, cin):
        super().__init__()
        self.branch3x3_1 = RefConv(cin, 192, kernel_size=1)
        self.branch3x3_2 = RefConv(192, 320, kernel_size=3, stride=2)
        self.branch7x7x3_1 = RefConv(cin, 192, kernel_size=1)
        self.branch7x7x3_2 = RefConv(192, 192, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7x3_3 = RefConv(192, 192, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7x3_4 = RefConv(192, 192, kernel_size=3, stride=2)

    def forward(self, x):
        b7 = x
        for i in range(1, 5):
            b7 = getattr(self, f"branch7x7x3_{i}")(b7)
        return torch.cat([self.branch3x3_2(self.branch3x3_1(x)), b7, F.max_pool2d(x, kernel_size=3, stride=2)], 1)


class RefE(nn.Module):
    def __init__(self, cin, pool):
        super().__init__()
        self.pool = pool
        self.branch1x1 = RefConv(cin, 320, kernel_size=1)
        self.branch3x3_1 = RefConv(cin, 384, kernel_size=1)
        self.branch3x3_2a = RefConv(384, 384, kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3_2b = RefConv(384, 384, kernel_size=(3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = RefConv(cin, 448, kernel_size=1)
        self.branch3x3dbl_2 = RefConv(448, 384, kernel_size=3, padding=1)
        self.branch3x3dbl_3a = RefConv(384, 384, kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = RefConv(384, 384, kernel_size=(3, 1), padding=(1, 0))
        self.branch_pool = RefConv(cin, 192, kernel_size=1)

    def forward(self, x):
        b3 = self.branch3x3_1(x)
        b3 = torch.cat([self.branch3x3_2a(b3), self.branch3x3_2b(b3)], 1)
        d = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        d = torch.cat([self.branch3x3dbl_3a(d), self.branch3x3dbl_3b(d)], 1)
        pooled = _avg3(x) if self.pool == "avg" else F.max_pool2d(x, kernel_size=3, stride=1, padding=1)
        return torch.cat([self.branch1x1(x), b3, d, self.branch_pool(pooled)], 1)


class RefFIDInception(nn.Module):
    """torchvision Inception3(num_classes=1008, aux_logits=False) with the FID blocks; forward as pytorch-fid."""

    def __init__(self):
        super().__init__()
        self.Conv2d_1a_3x3 = RefConv(3, 32, kernel_size=3, stride=2)
        self.Conv2d_2a_3x3 = RefConv(32, 32, kernel_size=3)
        self.Conv2d_2b_3x3 = RefConv(32, 64, kernel_size=3, padding=1)
        self.Conv2d_3b_1x1 = RefConv(64, 80, kernel_size=1)
        self.Conv2d_4a_3x3 = RefConv(80, 192, kernel_size=3)
        self.Mixed_5b, self.Mixed_5c, self.Mixed_5d = RefA(192, 32), RefA(256, 64), RefA(288, 64)
        self.Mixed_6a = RefB(288)
        self.Mixed_6b, self.Mixed_6c = RefC(768, 128), RefC(768, 160)
        self.Mixed_6d, self.Mixed_6e = RefC(768, 160), RefC(768, 192)
        self.Mixed_7a = RefD(768)
        self.Mixed_7b, self.Mixed_7c = RefE(1280, "avg"), RefE(2048, "max")
        self.fc = nn.Linear(2048, 1008)  # in the released state dict, unused by pool3 features

    def forward(self, x):  # NCHW in [0, 1]
        x = F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)
        x = 2 * x - 1
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = F.max_pool2d(x, kernel_size=3, stride=2)
        x = F.max_pool2d(self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x)), kernel_size=3, stride=2)
        for name in ("5b", "5c", "5d", "6a", "6b", "6c", "6d", "6e", "7a", "7b", "7c"):
            x = getattr(self, f"Mixed_{name}")(x)
        return F.adaptive_avg_pool2d(x, (1, 1)).flatten(1)


def _nchw(images_u8):
    return torch.from_numpy(images_u8).permute(0, 3, 1, 2).float().div(255)  # pytorch-fid's ToTensor


@pytest.fixture(scope="module")
def reference():
    """Random reference network, its state dict, test images and their float32 features.

    He-normal kernels and mild random BatchNorm parameters/statistics keep the network well
    conditioned: PyTorch's own float32 and float64 features agree to ~3e-6, so the 1e-4 tolerance
    below tests the architecture, not rounding.  (BatchNorm statistics calibrated on a few images
    leave near-dead channels that amplify float32 rounding to ~4e-4 in PyTorch itself.)
    """
    torch.manual_seed(0)
    net = RefFIDInception()
    with torch.no_grad():
        for module in net.modules():
            if isinstance(module, nn.Conv2d):
                module.weight.normal_(0.0, (2.0 / module.weight[0].numel()) ** 0.5)
            elif isinstance(module, nn.BatchNorm2d):
                module.weight.uniform_(0.8, 1.2)
                module.bias.normal_(0.0, 0.1)
                module.running_mean.normal_(0.0, 0.1)
                module.running_var.uniform_(0.8, 1.2)
    net.eval()
    images = np.random.default_rng(0).integers(0, 256, (NUM_IMAGES, SIZE, SIZE, 3), dtype=np.uint8)
    with torch.no_grad():
        expected = net(_nchw(images)).numpy()
    return net, net.state_dict(), images, expected


@pytest.fixture(scope="module")
def jax_params(reference, tmp_path_factory):
    path = tmp_path_factory.mktemp("weights") / "pt_inception-test.pth"
    torch.save(reference[1], path)
    return load_inception_params(path)


@pytest.fixture(scope="module")
def jax_features(reference, jax_params):
    """Features of the test images through the public batched path (3 images, batches of 2)."""
    return fid.inception_features(reference[2], jax_params, batch_size=BATCH)


# -- network parity ---------------------------------------------------------------------------------


def test_flax_inception_equals_pytorch_reference(reference, jax_features):
    expected, features = reference[3], jax_features
    assert features.shape == (NUM_IMAGES, 2048) and features.dtype == np.float32
    assert expected.std() > 0.1  # activations did not vanish
    error = np.abs(features - expected)
    print(f"max abs error {error.max():.3g}, max rel error {(error / np.maximum(np.abs(expected), 1e-3)).max():.3g}, "
          f"feature scale {np.abs(expected).max():.3g}")
    np.testing.assert_allclose(features, expected, atol=1e-4, rtol=0)


def test_mesh_and_float_range_give_the_same_features(reference, jax_params):
    _, _, images, expected = reference
    as_float = images.astype(np.float32) / 127.5 - 1.0  # [-1, 1]
    features = fid.inception_features(as_float, jax_params, batch_size=BATCH, mesh=batch_mesh(),
                                      value_range=(-1.0, 1.0))
    np.testing.assert_allclose(features, expected, atol=1e-4, rtol=0)
    with pytest.raises(ValueError, match="value_range"):
        fid.inception_features(as_float, jax_params, batch_size=BATCH)  # [-1, 1] data declared [0, 1]
    with pytest.raises(ValueError, match="uint8"):
        fid.inception_features(images, jax_params, value_range=(-1, 1))
    with pytest.raises(ValueError, match="NHWC"):
        fid.inception_features(images.transpose(0, 3, 1, 2), jax_params)


@pytest.mark.skipif(importlib.util.find_spec("torchvision") is None or importlib.util.find_spec("pytorch_fid") is None,
                    reason="pytorch-fid needs torchvision, which is not installable beside this torch build")
def test_reference_equals_pytorch_fid(reference, monkeypatch):
    import pytorch_fid.inception as pfid

    _, state_dict, images, expected = reference
    monkeypatch.setattr(pfid, "load_state_dict_from_url", lambda *args, **kwargs: state_dict)
    model = pfid.InceptionV3([3]).eval()
    with torch.no_grad():
        actual = model(_nchw(images))[0].flatten(1).numpy()
    np.testing.assert_allclose(actual, expected, atol=1e-5, rtol=0)


def test_resize_matches_torch_interpolate():
    rng = np.random.default_rng(1)
    for shape, size in (((1, 32, 20, 2), (299, 299)), ((1, 300, 310, 1), (299, 150))):
        x = rng.standard_normal(shape).astype(np.float32)
        ours = np.asarray(inception.resize_bilinear(x, size))
        theirs = F.interpolate(torch.from_numpy(x).permute(0, 3, 1, 2), size=size, mode="bilinear",
                               align_corners=False).permute(0, 2, 3, 1).numpy()
        np.testing.assert_allclose(ours, theirs, atol=1e-5, rtol=0)


# -- Fréchet distance -------------------------------------------------------------------------------


def _sqrtm_disp_false(matrix):
    """``scipy.linalg.sqrtm(matrix, disp=False)[0]`` as pytorch-fid calls it (``disp`` is gone in SciPy 1.18)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return scipy.linalg.sqrtm(matrix, disp=False)[0]
        except TypeError:
            return scipy.linalg.sqrtm(matrix)


def _pytorch_fid_frechet(mu1, sigma1, mu2, sigma2, eps=1e-6):
    """pytorch-fid 0.3.0 ``calculate_frechet_distance``, transcribed (its module imports torchvision)."""
    mu1, mu2 = np.atleast_1d(mu1), np.atleast_1d(mu2)
    sigma1, sigma2 = np.atleast_2d(sigma1), np.atleast_2d(sigma2)
    diff = mu1 - mu2
    covmean = _sqrtm_disp_false(sigma1.dot(sigma2))
    if not np.isfinite(covmean).all():
        offset = np.eye(sigma1.shape[0]) * eps
        covmean = scipy.linalg.sqrtm((sigma1 + offset).dot(sigma2 + offset))
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            raise ValueError(f"Imaginary component {np.max(np.abs(covmean.imag))}")
        covmean = covmean.real
    return diff.dot(diff) + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean)


def _references():
    refs = [_pytorch_fid_frechet]
    try:
        from pytorch_fid.fid_score import calculate_frechet_distance
    except ImportError:
        pass
    else:
        refs.append(calculate_frechet_distance)
    return refs


def _features(seed, n, d, shift=0.0):
    rng = np.random.default_rng(seed)
    mixing = rng.standard_normal((d, d)) / np.sqrt(d)
    return np.maximum(rng.standard_normal((n, d)) @ mixing + shift, 0.0)  # ReLU-like, correlated


@pytest.mark.parametrize("n", [500, 20])  # 20 < 64: singular covariances
def test_frechet_distance_equals_pytorch_fid(n):
    stats1 = fid.feature_statistics(_features(0, n, 64))
    stats2 = fid.feature_statistics(_features(1, n, 64, shift=0.3))
    ours = fid.frechet_distance(*stats1, *stats2)
    assert isinstance(ours, float) and ours > 0
    for ref in _references():
        theirs = float(ref(*stats1, *stats2))
        print(f"n={n}: ours {ours!r}, {ref.__module__}.{ref.__name__} {theirs!r}")
        assert abs(ours - theirs) <= 1e-12 * abs(theirs)


def test_feature_statistics_are_float64_mean_and_unbiased_covariance():
    features = _features(2, 50, 8).astype(np.float32)
    mu, sigma = fid.feature_statistics(features)
    assert mu.dtype == sigma.dtype == np.float64
    centered = features.astype(np.float64) - features.astype(np.float64).mean(0)
    np.testing.assert_allclose(sigma, centered.T @ centered / 49, rtol=1e-12)
    with pytest.raises(ValueError, match="at least 2"):
        fid.feature_statistics(features[:1])


def test_frechet_distance_of_a_set_with_itself_is_zero_and_symmetric():
    stats1 = fid.feature_statistics(_features(3, 400, 32))
    stats2 = fid.feature_statistics(_features(4, 400, 32, shift=0.5))
    scale = np.trace(stats1[1])
    assert abs(fid.frechet_distance(*stats1, *stats1)) < 1e-8 * scale
    forward, backward = fid.frechet_distance(*stats1, *stats2), fid.frechet_distance(*stats2, *stats1)
    assert forward > 1e-3 * scale
    assert abs(forward - backward) < 1e-9 * forward
    with pytest.raises(ValueError, match="shape"):
        fid.frechet_distance(stats1[0], stats1[1], stats2[0][:-1], stats2[1][:-1, :-1])


# -- converter --------------------------------------------------------------------------------------


def test_converter_round_trips_torch_save(reference, jax_params):
    state_dict = reference[1]
    assert "fc.weight" in state_dict and "Conv2d_1a_3x3.bn.num_batches_tracked" in state_dict  # ignored keys
    conv = jax_params["Mixed_6b"]["branch7x7_2"]["conv"]["kernel"]
    np.testing.assert_array_equal(conv, state_dict["Mixed_6b.branch7x7_2.conv.weight"].numpy().transpose(2, 3, 1, 0))
    bn = jax_params["Mixed_7c"]["branch_pool"]["bn"]
    for ours, theirs in (("scale", "weight"), ("bias", "bias"), ("mean", "running_mean"), ("var", "running_var")):
        np.testing.assert_array_equal(bn[ours], state_dict[f"Mixed_7c.branch_pool.bn.{theirs}"].numpy())
    leaves = jax.tree_util.tree_leaves(jax_params)
    assert len(leaves) == 94 * 5 and all(leaf.dtype == np.float32 for leaf in leaves)
    shapes = jax.tree_util.tree_map(np.shape, inception.abstract_params())
    assert jax.tree_util.tree_map(np.shape, jax_params) == shapes


def test_converter_rejects_renamed_missing_and_misshapen_keys(reference):
    state_dict = dict(reference[1])
    renamed = dict(state_dict)
    renamed["Mixed_5b.branch1x1.conv.weights"] = renamed.pop("Mixed_5b.branch1x1.conv.weight")
    with pytest.raises(ValueError, match=r"(?s)1 missing keys, 1 unexpected keys.*conv\.weights"):
        convert_inception_state_dict(renamed)
    missing = dict(state_dict)
    del missing["Mixed_6e.branch_pool.bn.running_var"]
    with pytest.raises(ValueError, match="running_var"):
        convert_inception_state_dict(missing)
    misshapen = dict(state_dict)
    misshapen["Mixed_7a.branch3x3_2.conv.weight"] = torch.zeros(320, 192, 3, 2)
    with pytest.raises(ValueError, match="1 shape mismatches"):
        convert_inception_state_dict(misshapen)


def test_load_inception_params_rejects_missing_file(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        load_inception_params(tmp_path / "nope.pth")


# -- reference statistics ---------------------------------------------------------------------------


def test_load_reference_statistics_from_stats_folder_and_image_npz(reference, jax_params, jax_features, tmp_path):
    from PIL import Image

    images = reference[2]
    mu, sigma = fid.feature_statistics(jax_features)
    stats_file = tmp_path / "cifar10-32x32.npz"
    np.savez(stats_file, mu=mu, sigma=sigma)  # EDM fid-refs layout
    loaded = fid.load_reference_statistics(stats_file)
    np.testing.assert_array_equal(loaded[0], mu)
    np.testing.assert_array_equal(loaded[1], sigma)

    folder = tmp_path / "samples"
    (folder / "000000").mkdir(parents=True)
    for i, image in enumerate(images):
        Image.fromarray(image).save(folder / "000000" / f"{i:06d}.png")
    from_folder = fid.load_reference_statistics(folder, jax_params, batch_size=BATCH)
    np.testing.assert_allclose(from_folder[0], mu, atol=1e-12)
    np.testing.assert_allclose(from_folder[1], sigma, atol=1e-12)

    np.savez(tmp_path / "images.npz", arr_0=images)  # guided-diffusion sample layout
    from_npz = fid.load_reference_statistics(tmp_path / "images.npz", jax_params, batch_size=BATCH)
    np.testing.assert_allclose(from_npz[0], mu, atol=1e-12)
    np.testing.assert_allclose(from_npz[1], sigma, atol=1e-12)


def test_load_reference_statistics_rejects_bad_files(tmp_path):
    cases = {}
    cases["does not exist"] = tmp_path / "missing.npz"
    (tmp_path / "stats.txt").write_text("mu sigma")
    cases["must be an .npz"] = tmp_path / "stats.txt"
    (tmp_path / "corrupt.npz").write_bytes(b"not a zip file")
    cases["cannot read"] = tmp_path / "corrupt.npz"
    np.savez(tmp_path / "keys.npz", mean=np.zeros(4))
    cases["expected 'mu' and 'sigma'"] = tmp_path / "keys.npz"
    np.savez(tmp_path / "shapes.npz", mu=np.zeros(4), sigma=np.zeros((4, 3)))
    cases["not \\(D,\\) and \\(D, D\\)"] = tmp_path / "shapes.npz"
    np.savez(tmp_path / "nan.npz", mu=np.full(2, np.nan), sigma=np.eye(2))
    cases["NaN"] = tmp_path / "nan.npz"
    np.savez(tmp_path / "nchw.npz", arr_0=np.zeros((4, 3, 8, 8), np.uint8))
    cases["NCHW"] = tmp_path / "nchw.npz"
    np.savez(tmp_path / "one.npz", images=np.zeros((1, 8, 8, 3), np.uint8))
    cases["need at least 2"] = tmp_path / "one.npz"
    np.savez(tmp_path / "noparams.npz", images=np.zeros((4, 8, 8, 3), np.uint8))
    cases["needs Inception params"] = tmp_path / "noparams.npz"
    (tmp_path / "empty").mkdir()
    cases["holds 0 images"] = tmp_path / "empty"
    for match, path in cases.items():
        with pytest.raises(ValueError, match=match):
            fid.load_reference_statistics(path, params=None if "params" in match else {})


def test_load_reference_statistics_rejects_bad_images(tmp_path):
    from PIL import Image

    mixed = tmp_path / "mixed"
    mixed.mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(mixed / "a.png")
    Image.fromarray(np.zeros((9, 8, 3), np.uint8)).save(mixed / "b.png")
    with pytest.raises(ValueError, match="all must match"):
        fid.load_reference_statistics(mixed, params={})
    broken = tmp_path / "broken"
    broken.mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(broken / "a.png")
    (broken / "b.png").write_bytes(b"\x89PNG truncated")
    with pytest.raises(ValueError, match=r"cannot read image .*b\.png"):
        fid.load_reference_statistics(broken, params={})


def test_to_uint8_matches_edm_quantisation():
    x = np.array([-1.5, -1.0, -0.5, 0.0, 0.999, 1.0, 2.0], np.float32)
    edm = torch.from_numpy(x).mul(127.5).add(128).clip(0, 255).to(torch.uint8).numpy()
    np.testing.assert_array_equal(fid.to_uint8(x), edm)

