"""The 15 CIFAR-10-C corruptions × severities 1–5 (Hendrycks & Dietterich 2019; IFA paper §B.9).

``corrupt(x, name, severity, seed)`` works on any batch N×C×H×W in [0, 1], gray (C=1) or colour
(C=3), any size ≥ 8, and returns a float32 batch of the same shape in [0, 1]. Severity parameters
are those of the CIFAR version of the authors' ``make_cifar_c.py``; sizes that the original gives
in pixels for 32×32 images (elastic transform) scale with the image size. Implementation is our
own, vectorised over the batch in torch/numpy/scipy, seeded (numpy PCG64 + torch.Generator):

- ImageMagick's motion blur (used by motion_blur and snow) is rebuilt as its one-sided kernel:
  taps at rounded offsets i·(cos a, sin a), i = 0..2r, weights exp(−i²/2σ²), edge pixels repeated.
- frost: the original blends in photographs of frost (texture files not redistributed); here the
  frost layer is synthesised procedurally (multi-scale fractal noise plus blurred crystal streaks,
  pale blue-white, mean ≈ 0.45), blended with the published weights.
- brightness uses the exact closed form of the HSV value shift: rgb · V'/V with V = max(r, g, b).
- pixelate and jpeg_compression go through Pillow (BOX resize; JPEG at the published qualities),
  on images quantised to 8 bits as in the original.
- glass_blur keeps the original's local pixel swaps with offsets drawn from {−1, 0}
  (``randint(-1, 1)``), done for all images at once per pixel position.

``load_corrupted`` returns the published CIFAR-10-C / CIFAR-100-C test sets when their files are
here, and generated ones otherwise.
"""
from __future__ import annotations

import io
import math

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from ..errors import PrealignError, UnknownNameError

from .registry import CORRUPTIONS  # the 15 names and their categories live with the data sets

# Published CIFAR-10-C severity parameters (make_cifar_c.py), index = severity − 1.
PARAMS = {
    "gaussian_noise": [0.04, 0.06, 0.08, 0.09, 0.10],  # std
    "shot_noise": [500, 250, 100, 75, 50],  # photons per unit intensity
    "impulse_noise": [0.01, 0.02, 0.03, 0.05, 0.07],  # salt & pepper fraction
    "defocus_blur": [(0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1, 0.2), (1.5, 0.1)],  # disk radius, alias blur σ
    "glass_blur": [(0.05, 1, 1), (0.25, 1, 1), (0.4, 1, 1), (0.25, 1, 2), (0.4, 1, 2)],  # σ, max delta, iterations
    "motion_blur": [(6, 1), (6, 1.5), (6, 2), (8, 2), (9, 2.5)],  # radius, σ (angle ±45°)
    "zoom_blur": [np.arange(1, 1.06, 0.01), np.arange(1, 1.11, 0.01), np.arange(1, 1.16, 0.01),
                  np.arange(1, 1.21, 0.01), np.arange(1, 1.26, 0.01)],
    "snow": [(0.1, 0.2, 1, 0.6, 8, 3, 0.95), (0.1, 0.2, 1, 0.5, 10, 4, 0.9), (0.15, 0.3, 1.75, 0.55, 10, 4, 0.9),
             (0.25, 0.3, 2.25, 0.6, 12, 6, 0.85), (0.3, 0.3, 1.25, 0.65, 14, 12, 0.8)],
    "frost": [(1, 0.2), (1, 0.3), (0.9, 0.4), (0.85, 0.4), (0.75, 0.45)],  # image weight, frost weight
    "fog": [(0.2, 3), (0.5, 3), (0.75, 2.5), (1, 2), (1.5, 1.75)],  # fog strength, wibble decay
    "brightness": [0.05, 0.1, 0.15, 0.2, 0.3],
    "contrast": [0.75, 0.5, 0.4, 0.3, 0.15],
    "elastic_transform": [(0, 0, 0.08), (0.05, 0.2, 0.07), (0.08, 0.06, 0.06), (0.1, 0.04, 0.05), (0.1, 0.03, 0.03)],
    "pixelate": [0.95, 0.9, 0.85, 0.75, 0.65],
    "jpeg_compression": [80, 65, 58, 50, 40],  # quality
}


# ----------------------------------------------------------------------------- helpers
def _gray(x: torch.Tensor) -> torch.Tensor:
    """N×1×H×W luminance (ITU-R 601, as cv2.COLOR_RGB2GRAY); gray input returned as is."""
    if x.shape[1] == 1:
        return x
    w = torch.tensor([0.299, 0.587, 0.114], dtype=x.dtype).view(1, 3, 1, 1)
    return (x * w).sum(1, keepdim=True)


def _gaussian(x: np.ndarray, sigma: float, mode: str = "nearest", truncate: float = 4.0) -> np.ndarray:
    """Gaussian blur over the last two axes (skimage.filters.gaussian's defaults: nearest, truncate 4)."""
    if sigma <= 0:
        return x
    return ndimage.gaussian_filter(x, sigma=[0] * (x.ndim - 2) + [sigma, sigma], mode=mode, truncate=truncate)


def _conv_same(x: torch.Tensor, kernel: np.ndarray) -> torch.Tensor:
    """Correlate each channel with a 2-D kernel, reflect-101 borders (cv2.filter2D's default)."""
    k = torch.as_tensor(kernel, dtype=x.dtype)
    kh, kw = k.shape
    n, c, h, w = x.shape
    pad = (kw // 2, kw - 1 - kw // 2, kh // 2, kh - 1 - kh // 2)
    xp = F.pad(x.reshape(n * c, 1, h, w), pad, mode="reflect")
    return F.conv2d(xp, k.view(1, 1, kh, kw)).reshape(n, c, h, w)


def _disk(radius: float, alias_blur: float) -> np.ndarray:
    """make_cifar_c's defocus kernel: an aliased disk on a 17×17 grid, blurred by a 3×3 Gaussian
    of σ = alias_blur, trimmed to its non-zero support."""
    ax = np.arange(-8, 9)
    xx, yy = np.meshgrid(ax, ax)
    disk = ((xx ** 2 + yy ** 2) <= radius ** 2).astype(np.float64)
    disk /= disk.sum()
    g = np.exp(-(np.arange(-1, 2) ** 2) / (2 * alias_blur ** 2))
    g /= g.sum()
    disk = ndimage.convolve1d(ndimage.convolve1d(disk, g, axis=0, mode="reflect"), g, axis=1, mode="reflect")
    rows, cols = np.flatnonzero(disk.sum(1) > 1e-12), np.flatnonzero(disk.sum(0) > 1e-12)
    return disk[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]


def _shift(x: torch.Tensor, dx: torch.Tensor, dy: torch.Tensor) -> torch.Tensor:
    """out[n, :, i, j] = x[n, :, clamp(i + dy[n]), clamp(j + dx[n])] for integer per-image offsets."""
    n, c, h, w = x.shape
    rows = (torch.arange(h).view(1, h) + dy.view(n, 1)).clamp(0, h - 1)  # n×h
    cols = (torch.arange(w).view(1, w) + dx.view(n, 1)).clamp(0, w - 1)  # n×w
    idx_n = torch.arange(n).view(n, 1, 1)
    out = x.permute(0, 2, 3, 1)[idx_n, rows.view(n, h, 1), cols.view(n, 1, w)]  # n×h×w×c
    return out.permute(0, 3, 1, 2)


def _motion_blur(x: torch.Tensor, radius: int, sigma: float, angle_deg: torch.Tensor) -> torch.Tensor:
    """ImageMagick-style one-sided motion blur: Σ_i k_i · x(p + round(i·(cos a, sin a))), i = 0..2r,
    k_i ∝ exp(−i²/2σ²); ``angle_deg`` per image (degrees)."""
    width = 2 * int(math.ceil(radius)) + 1
    weights = torch.exp(-torch.arange(width, dtype=torch.float64) ** 2 / (2 * sigma ** 2))
    weights = (weights / weights.sum()).to(x.dtype)
    a = torch.deg2rad(angle_deg.to(torch.float64))
    out = torch.zeros_like(x)
    for i in range(width):
        if weights[i] < 1e-8:
            break
        dx, dy = torch.round(i * torch.cos(a)).long(), torch.round(i * torch.sin(a)).long()
        out += weights[i] * _shift(x, dx, dy)
    return out


def _clipped_zoom(x: torch.Tensor, factor: float) -> torch.Tensor:
    """Zoom into the centre by ``factor`` keeping the size (scipy.ndimage.zoom order 1 on the central crop)."""
    h, w = x.shape[-2:]
    ch, cw = int(np.ceil(h / factor)), int(np.ceil(w / factor))
    top, left = (h - ch) // 2, (w - cw) // 2
    crop = x[..., top:top + ch, left:left + cw]
    oh, ow = int(round(ch * factor)), int(round(cw * factor))
    z = F.interpolate(crop, size=(oh, ow), mode="bilinear", align_corners=True)
    t, l = (oh - h) // 2, (ow - w) // 2
    return z[..., t:t + h, l:l + w]


def _plasma_fractal(n: int, mapsize: int, wibbledecay: float, rng: np.random.Generator) -> np.ndarray:
    """Diamond-square fractal noise, n maps of mapsize×mapsize (power of 2), normalised to [0, 1]."""
    maps = np.zeros((n, mapsize, mapsize))
    step, wibble = mapsize, 100.0

    def wibbled(a):
        return a / 4 + wibble * rng.uniform(-wibble, wibble, a.shape)

    while step >= 2:
        half = step // 2
        corners = maps[:, 0:mapsize:step, 0:mapsize:step]
        squares = corners + np.roll(corners, -1, axis=1)
        squares = squares + np.roll(squares, -1, axis=2)
        maps[:, half:mapsize:step, half:mapsize:step] = wibbled(squares)
        dr = maps[:, half:mapsize:step, half:mapsize:step]
        ul = maps[:, 0:mapsize:step, 0:mapsize:step]
        maps[:, 0:mapsize:step, half:mapsize:step] = wibbled(dr + np.roll(dr, 1, axis=1) + ul + np.roll(ul, -1, axis=2))
        maps[:, half:mapsize:step, 0:mapsize:step] = wibbled(dr + np.roll(dr, 1, axis=2) + ul + np.roll(ul, -1, axis=1))
        step //= 2
        wibble /= wibbledecay
    maps -= maps.min(axis=(1, 2), keepdims=True)
    return maps / maps.max(axis=(1, 2), keepdims=True)


def _pil_roundtrip(x: torch.Tensor, fn) -> torch.Tensor:
    """Apply ``fn(PIL.Image) -> PIL.Image`` to each image, quantised to uint8 (L or RGB)."""
    from PIL import Image

    arr = (x.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    out = np.empty_like(arr)
    for i, img in enumerate(arr):
        pil = Image.fromarray(img[..., 0] if img.shape[-1] == 1 else img)
        res = np.asarray(fn(pil))
        out[i] = res.reshape(out[i].shape)
    return torch.from_numpy(out).permute(0, 3, 1, 2).float() / 255


def _frost_layer(n: int, c: int, h: int, w: int, rng: np.random.Generator) -> torch.Tensor:
    """Procedural frost texture in [0, 1]: multi-scale fractal noise plus thin blurred crystal
    streaks, tinted pale blue (colour) — a stand-in for the original frost photographs."""
    size = 1 << max(3, int(np.ceil(np.log2(max(h, w)))))
    base = _plasma_fractal(n, size, 1.6, rng)[:, :h, :w]
    streaks = np.zeros((n, h, w))
    count = max(4, (h * w) // 64)
    for k in range(n):
        ys, xs = rng.uniform(0, h, count), rng.uniform(0, w, count)
        ang, length = rng.uniform(0, np.pi, count), rng.uniform(0.1, 0.4, count) * max(h, w)
        for t in np.linspace(0, 1, 12):
            r = np.clip((ys + t * length * np.sin(ang)).astype(int), 0, h - 1)
            q = np.clip((xs + t * length * np.cos(ang)).astype(int), 0, w - 1)
            streaks[k, r, q] = 1.0
    streaks = _gaussian(streaks[:, None], 0.5)[:, 0]
    frost = 0.55 * base + 0.45 * streaks / max(streaks.max(), 1e-8)
    frost = np.clip(frost / max(frost.mean(), 1e-8) * 0.45, 0, 1)
    layer = torch.from_numpy(frost).float()[:, None]
    if c == 3:
        layer = layer * torch.tensor([0.85, 0.93, 1.0]).view(1, 3, 1, 1)
    return layer.expand(n, c, h, w)


# ----------------------------------------------------------------------------- corruptions
def _apply(x: torch.Tensor, name: str, p, rng: np.random.Generator, g: torch.Generator) -> torch.Tensor:
    n, c, h, w = x.shape
    if name == "gaussian_noise":
        return x + p * torch.randn(x.shape, generator=g)
    if name == "shot_noise":
        return torch.poisson(x * p, generator=g) / p
    if name == "impulse_noise":
        hit = torch.rand(x.shape, generator=g) < p
        salt = torch.rand(x.shape, generator=g) < 0.5
        return torch.where(hit, salt.to(x.dtype), x)
    if name == "defocus_blur":
        return _conv_same(x, _disk(*p))
    if name == "glass_blur":
        sigma, delta, iterations = p
        img = torch.from_numpy(np.floor(np.clip(_gaussian(x.numpy(), sigma), 0, 1) * 255) / 255).float()
        rows = torch.arange(n)
        for _ in range(iterations):
            for i in range(h - delta, delta, -1):
                for j in range(w - delta, delta, -1):
                    d = torch.from_numpy(rng.integers(-delta, delta, size=(n, 2)))
                    i2, j2 = i + d[:, 1], j + d[:, 0]
                    a, b = img[rows, :, i, j].clone(), img[rows, :, i2, j2].clone()
                    img[rows, :, i, j], img[rows, :, i2, j2] = b, a
        return torch.from_numpy(_gaussian(img.numpy(), sigma)).float()
    if name == "motion_blur":
        return _motion_blur(x, p[0], p[1], torch.from_numpy(rng.uniform(-45, 45, n)))
    if name == "zoom_blur":
        out = x.clone()
        for factor in p:
            out += _clipped_zoom(x, float(factor))
        return out / (len(p) + 1)
    if name == "snow":
        loc, scale_, zoom, threshold, radius, sigma, keep = p
        layer = torch.from_numpy(rng.normal(loc, scale_, size=(n, 1, h, w))).float()
        layer = _clipped_zoom(layer, zoom)
        layer[layer < threshold] = 0
        layer = (layer.clamp(0, 1) * 255).round() / 255  # the original passes through an 8-bit PNG
        layer = _motion_blur(layer, radius, sigma, torch.from_numpy(rng.uniform(-135, -45, n)))
        layer = (layer * 255).round() / 255
        x = keep * x + (1 - keep) * torch.maximum(x, _gray(x) * 1.5 + 0.5)
        return x + layer + torch.flip(layer, dims=(-2, -1))
    if name == "frost":
        return p[0] * x + p[1] * _frost_layer(n, c, h, w, rng)
    if name == "fog":
        strength, decay = p
        size = 1 << max(3, int(np.ceil(np.log2(max(h, w)))))
        fractal = torch.from_numpy(_plasma_fractal(n, size, decay, rng)[:, None, :h, :w]).float()
        peak = x.amax(dim=(1, 2, 3), keepdim=True)
        return (x + strength * fractal) * peak / (peak + strength)
    if name == "brightness":
        v = x.amax(1, keepdim=True)
        v_new = (v + p).clamp(0, 1)
        return torch.where(v > 0, x * v_new / v.clamp_min(1e-12), v_new.expand_as(x))
    if name == "contrast":
        means = x.mean(dim=(2, 3), keepdim=True)
        return (x - means) * p + means
    if name == "elastic_transform":
        size = min(h, w)
        alpha, sigma, affine_max = p[0] * size, p[1] * size, p[2] * size
        centre = np.array([w, h], np.float64) // 2  # (x, y)
        half = size // 3
        pts1 = np.array([centre + half, [centre[0] + half, centre[1] - half], centre - half])
        pts2 = pts1 + rng.uniform(-affine_max, affine_max, size=(n, 3, 2))
        src = np.concatenate([pts1, np.ones((3, 1))], 1)  # 3×3
        m = np.linalg.solve(src, pts2).transpose(0, 2, 1)  # n×2×3: dst = M·[src, 1]
        m_full = np.concatenate([m, np.broadcast_to([[0, 0, 1]], (n, 1, 3))], 1)
        inv = np.linalg.inv(m_full)[:, :2]  # output pixel → input pixel (warpAffine)
        # pixel coordinates → normalised (align_corners=True): u = 2p/(size−1) − 1
        to_norm = np.diag([2 / (w - 1), 2 / (h - 1), 1.0])
        to_norm[0, 2], to_norm[1, 2] = -1, -1
        theta = to_norm[:2] @ np.concatenate([inv, np.broadcast_to([[0, 0, 1]], (n, 1, 3))], 1) @ np.linalg.inv(to_norm)
        grid = F.affine_grid(torch.from_numpy(theta).float(), [n, c, h, w], align_corners=True)
        warped = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=True)
        shifts = rng.uniform(-1, 1, size=(2, n, 1, h, w))
        dx = torch.from_numpy(_gaussian(shifts[0], sigma, mode="reflect", truncate=3) * alpha).float()
        dy = torch.from_numpy(_gaussian(shifts[1], sigma, mode="reflect", truncate=3) * alpha).float()
        ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij")
        gx = (xs + dx[:, 0]) * 2 / (w - 1) - 1
        gy = (ys + dy[:, 0]) * 2 / (h - 1) - 1
        return F.grid_sample(warped, torch.stack([gx, gy], -1), mode="bilinear", padding_mode="reflection",
                             align_corners=True)
    if name == "pixelate":
        from PIL import Image

        return _pil_roundtrip(x, lambda im: im.resize((int(w * p), int(h * p)), Image.BOX).resize((w, h), Image.BOX))
    if name == "jpeg_compression":
        from PIL import Image

        def jpeg(im):
            buf = io.BytesIO()
            im.save(buf, "JPEG", quality=p)
            return Image.open(buf).convert(im.mode)

        return _pil_roundtrip(x, jpeg)
    raise UnknownNameError("corruption", name, CORRUPTIONS)


def corrupt(x: torch.Tensor, name: str, severity: int, seed: int = 0) -> torch.Tensor:
    """Corrupt a batch ``x`` (N×C×H×W, values in [0, 1], C = 1 or 3, H, W ≥ 8) with corruption
    ``name`` at ``severity`` 1..5. Returns float32 N×C×H×W in [0, 1] on ``x``'s device; seeded."""
    if name not in CORRUPTIONS:
        raise UnknownNameError("corruption", name, CORRUPTIONS)
    if severity not in (1, 2, 3, 4, 5):
        raise PrealignError(f"corruption severity must be 1..5, got {severity!r}")
    if x.ndim != 4 or x.shape[1] not in (1, 3) or min(x.shape[-2:]) < 8:
        raise PrealignError(f"corrupt() needs a batch N×C×H×W with C = 1 or 3 and H, W ≥ 8; got {tuple(x.shape)}")
    rng = np.random.default_rng([seed, list(CORRUPTIONS).index(name), severity])
    g = torch.Generator().manual_seed(int(rng.integers(2 ** 62)))
    out = _apply(x.detach().float().cpu().clamp(0, 1), name, PARAMS[name][severity - 1], rng, g)
    return out.clamp_(0, 1).to(torch.float32).to(x.device)


def load_corrupted(dataset, corruption: str, severity: int, root=None, seed: int = 0):
    """A Dataset whose train set is ``dataset``'s clean train set and whose test set is corrupted.

    ``dataset``: a name (loaded with :func:`prealign.data.load`) or a :class:`Dataset`. For CIFAR-10 /
    CIFAR-100 the published CIFAR-10-C / CIFAR-100-C files are used when found (search order as for
    any data set); otherwise the corruption is generated from the clean test set with ``seed``."""
    from .loading import load
    from .base import Dataset
    from .sources import locate

    if corruption not in CORRUPTIONS:
        raise UnknownNameError("corruption", corruption, CORRUPTIONS)
    if severity not in (1, 2, 3, 4, 5):
        raise PrealignError(f"corruption severity must be 1..5, got {severity!r}")
    clean = load(dataset, root) if isinstance(dataset, str) else dataset
    published = {"cifar10": "cifar10-c", "cifar100": "cifar100-c"}.get(clean.name)
    if published and locate(published, root)[0] is not None:
        real = load(published, root, corruption=corruption, severity=severity)
        x_test, y_test, source = real.x_test, real.y_test, real.source
    else:
        x_test, y_test = corrupt(clean.x_test, corruption, severity, seed), clean.y_test
        source = f"generated from {clean.source} (seed {seed})"
    return Dataset(f"{clean.name}[{corruption}-{severity}]", clean.x_train, clean.y_train, x_test.to(clean.x_test.device),
                   y_test.to(clean.y_test.device), clean.num_classes, source, clean.classes)
