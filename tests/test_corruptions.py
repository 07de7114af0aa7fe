"""The 15 CIFAR-10-C corruptions: change the image, keep shape/dtype/range, grow with severity, seeded."""
import colorsys
from dataclasses import replace

import numpy as np
import pytest
import torch
from scipy import ndimage

from prealign.data import corruptions
from prealign.data.corruptions import CORRUPTIONS, corrupt, load_corrupted
from prealign.errors import PrealignError, UnknownNameError


def smooth_images(n, c, size, seed=0):
    """Natural-looking test images: blurred noise (spatial structure) with a colour gradient, in [0.1, 0.9]."""
    rng = np.random.default_rng(seed)
    x = ndimage.gaussian_filter(rng.uniform(size=(n, c, size, size)), sigma=(0, 0, 2, 2))
    x = (x - x.min()) / (x.max() - x.min())
    x = 0.1 + 0.8 * (0.7 * x + 0.3 * np.linspace(0, 1, size)[None, None, None, :])
    return torch.from_numpy(x).float()


COLOUR = smooth_images(8, 3, 32)


def test_fifteen_in_four_categories():
    assert len(CORRUPTIONS) == 15
    assert sorted(set(CORRUPTIONS.values())) == ["blur", "digital", "noise", "weather"]


@pytest.mark.parametrize("name", list(CORRUPTIONS))
def test_each_corruption_changes_and_keeps_range(name):
    for x in (COLOUR, smooth_images(4, 1, 28)):
        for severity in (1, 5):
            y = corrupt(x, name, severity, seed=1)
            assert y.shape == x.shape and y.dtype == torch.float32
            assert y.min() >= 0 and y.max() <= 1
            assert (y - x).abs().mean() > 1e-4, f"{name} severity {severity} left the image unchanged"
    assert torch.equal(corrupt(COLOUR, name, 3, seed=7), corrupt(COLOUR, name, 3, seed=7))


def test_mean_change_grows_with_severity_for_most():
    monotone = []
    for name in CORRUPTIONS:
        change = [(corrupt(COLOUR, name, s, seed=0) - COLOUR).abs().mean().item() for s in range(1, 6)]
        if all(b >= a - 1e-3 for a, b in zip(change, change[1:])) and change[-1] > change[0]:
            monotone.append(name)
    assert len(monotone) >= 12, monotone


def test_seeds_differ_for_random_corruptions():
    assert not torch.equal(corrupt(COLOUR, "gaussian_noise", 3, seed=0), corrupt(COLOUR, "gaussian_noise", 3, seed=1))


def test_closed_forms():
    x = COLOUR[:2]
    c = corruptions.PARAMS["contrast"][2]
    m = x.mean(dim=(2, 3), keepdim=True)
    torch.testing.assert_close(corrupt(x, "contrast", 3), ((x - m) * c + m).clamp(0, 1))
    # brightness = HSV value shift, checked pixel by pixel against colorsys
    y = corrupt(x, "brightness", 4)
    b = corruptions.PARAMS["brightness"][3]
    for (i, r, q) in [(0, 0, 0), (1, 5, 7), (0, 31, 31)]:
        h, s, v = colorsys.rgb_to_hsv(*x[i, :, r, q].tolist())
        ref = colorsys.hsv_to_rgb(h, s, min(v + b, 1))
        torch.testing.assert_close(y[i, :, r, q], torch.tensor(ref, dtype=torch.float32), atol=1e-5, rtol=0)
    # impulse noise: about the published fraction of values set to exactly 0 or 1
    z = corrupt(torch.full((4, 3, 32, 32), 0.5), "impulse_noise", 5)
    frac = ((z == 0) | (z == 1)).float().mean().item()
    assert abs(frac - corruptions.PARAMS["impulse_noise"][4]) < 0.01
    # gaussian noise: std of the added noise is the published sigma (no clipping at 0.5)
    n = corrupt(torch.full((8, 3, 32, 32), 0.5), "gaussian_noise", 2) - 0.5
    assert abs(n.std().item() - 0.06) < 0.003
    # defocus kernel is normalised and symmetric
    k = corruptions._disk(1.5, 0.1)
    assert abs(k.sum() - 1) < 1e-9 and np.allclose(k, k.T) and np.allclose(k, k[::-1])


def test_bad_arguments():
    with pytest.raises(UnknownNameError):
        corrupt(COLOUR, "rain", 1)
    with pytest.raises(PrealignError):
        corrupt(COLOUR, "fog", 6)
    with pytest.raises(PrealignError):
        corrupt(torch.rand(2, 3, 4, 4), "fog", 1)


def test_load_corrupted_generates_and_uses_real_files(tmp_path, monkeypatch):
    from prealign.data import Dataset, sources

    monkeypatch.setattr(sources, "SYSTEM_DIR", tmp_path / "system")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("PREALIGN_DATA", raising=False)
    monkeypatch.setitem(sources.DATASETS, "cifar10-c", replace(sources.DATASETS["cifar10-c"], sizes=(0, 4)))  # 4 per severity
    clean = Dataset("cifar10", COLOUR, torch.arange(8) % 10, COLOUR, torch.arange(8) % 10, 10, "test")
    gen = load_corrupted(clean, "fog", 2)
    assert gen.name == "cifar10[fog-2]" and "generated" in gen.source
    assert torch.equal(gen.x_test, corrupt(COLOUR, "fog", 2)) and torch.equal(gen.x_train, COLOUR)
    folder = tmp_path / "root" / "cifar10-c"
    folder.mkdir(parents=True)
    real = np.random.default_rng(0).integers(0, 256, (5 * 4, 32, 32, 3), dtype=np.uint8)
    np.save(folder / "fog.npy", real)
    np.save(folder / "labels.npy", np.arange(20) % 10)
    used = load_corrupted(clean, "fog", 2, root=tmp_path / "root")
    assert torch.equal(used.x_test, torch.from_numpy(real[4:8]).permute(0, 3, 1, 2).float() / 255)
    assert used.y_test.tolist() == [4, 5, 6, 7]
