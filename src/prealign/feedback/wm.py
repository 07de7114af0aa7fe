"""Weight mirror (Akrout et al. 2019, NeurIPS, §4): ``B`` learns ``W`` from the layer's own noise-driven activity.

After every ``every``-th optimizer step that changes ``W`` (whatever the optimizer: Adam, AdamW,
SGD, fused or not, the trainer's or a user's own loop, LBFGS with a closure), each feedback layer
under a rule that ``mirrors`` runs ``steps`` mirror steps. In one mirror step the layer is driven
by zero-mean noise ``x`` of std ``σ`` (``batch`` samples; for a convolution, noise patches of one
receptive field), its forward path produces ``y = W x`` (no bias), and the feedback synapses
change by the Hebbian product of the two activities they connect, with a decay:

    ``B ← (1 − λ) B + (η / batch) · yᵀ x``      (``B``, ``W``: ``(out, in)``; ``x``: ``(batch, in)``; ``y``: ``(batch, out)``)

The paper writes its ``B`` as ``(in, out)`` (the matrix the error travels back through,
``δ_l = B δ_{l+1}``) and the rule as ``ΔB = η x yᵀ`` (its Eq. 7); prealign stores ``B`` with
``W``'s shape and sends the error as ``δ B`` (:mod:`prealign.feedback.rules`), so the same update
reads ``yᵀ x`` here. Since ``yᵀ x / batch = W (xᵀ x / batch)``, the step is ``η W (xᵀx / batch) − λ B``:
with ``E[xᵀ x] / batch = σ² I``, ``B`` settles at ``(η σ² / λ) W`` (with the default
``η = λ / σ²``, at ``W`` itself), up to the noise's sampling error, while ``W`` keeps moving.
``B`` is computed from ``x`` and ``y`` only — never from ``W``'s values directly; ``W`` enters only
through the forward activity ``y`` it produces.

Two kinds of noise (``wm_noise``, :func:`noise`):

- ``"gaussian"`` (the paper's): i.i.d. ``N(0, σ²)``. ``xᵀx / batch`` deviates from ``σ² I`` by
  sampling error, so ``B`` carries a random error of relative size ≈ ``sqrt(in · λ / (2 · batch · steps))``
  per row (fan-in ``in``). A small λ averages it away but lets ``B`` lag behind the moving ``W``;
  a large ``batch`` costs time. Defaults λ = 0.01, 512 samples, every step.
- ``"orthogonal"`` (default): a random orthogonal design, the orthonormal DCT-II basis with its
  rows randomly permuted and its columns' signs randomly flipped, drawn afresh at each mirror
  step. With ``batch ≥ in`` its columns are orthogonal, ``xᵀx = batch σ² I`` exactly, so one mirror
  step is exactly ``B ← (1 − λ) B + λ W`` (at the default η): no sampling error at all, and any
  orthogonal design gives the same step (a Haar-random rotation from a QR would too, at ≈ 8× the
  cost for ``in`` = 784). With ``batch < in`` its rows are orthogonal (a random ``batch``-dimensional
  subspace): unbiased, ``E[xᵀx] = batch σ² I``, with ≈ ``(1 − batch / in)`` times the Gaussian
  error variance. Convolutions use the same design over the flattened receptive field
  ``C_in · prod(kernel)``: the exactness holds for them too.

  Without sampling error the only angle left is the lag behind the moving ``W``, and that is set
  by how often and how strongly ``B`` is refreshed, so λ can be large and the mirror need not run
  every step: defaults ``batch`` = the fan-in, λ = 0.5, every 10 optimizer steps. Each mirroring
  costs ``batch · in · out`` multiply-adds twice (``in²·out`` at the default batch), a tenth of that
  per optimizer step; for very wide layers (``in`` ≳ 5,000 at ``every`` = 10) that is more than
  512 Gaussian samples every step would cost, and ``batch < in`` trades exactness for time.

Measured on the 784-100-100-10 MLP on mnist5k (Adam, lr 1e-4, batch 64, 10 epochs,
``prealign compare --methods fa,kp,wm --seeds 1 --epochs 10 --hidden 100,100``; Gaussian through
``wm_noise = "gaussian"`` in a sweep with the same settings): final ∠(W, B) per layer and best test
accuracy — orthogonal (defaults) 0.14°, 0.07°, 0.08°, 89.7 %; Gaussian (its defaults) 5.3°, 1.9°,
1.9°, 89.6 %; KP 0.19°, 0.19°, 0.19°, 89.4 %; FA 90°, 88°, 83°, 64.8 %. Training time (one
thread, least-loaded of several repeats): orthogonal ≈ 1.7× FA's, Gaussian ≈ 6.4× FA's, KP
≈ 1.1×. Gaussian noise cannot get there at any affordable cost: its angle is bounded below by
the lag behind ``W`` at small λ and by the sampling error at large λ (4,096 samples: 2.3°, 0.9°,
0.9° at ≈ 65× FA's time).

A simulation of the exact (orthogonal) mirror along a KP run's ``W`` trajectory gave the lag per
(λ, every): (0.01, 1) 1.6°, 0.8°, 0.8° (so Gaussian noise cannot reach KP's range at λ = 0.01 even
without sampling error, and at λ ≥ 0.05 its sampling error is ≥ 10° at 512 samples); (0.1, 1)
0.15°, 0.08°, 0.07°; (0.5, 10) 0.16°, 0.08°, 0.07° at the end, at most 0.33°, 0.15°, 0.15° over
the last epoch; with λ → 1 (``B`` just the last measurement; the setting allows λ < 1) every 20
steps at most 0.37°, 0.17°, 0.16°, every 50 at most 0.8°, 0.35°, 0.35°. The default keeps a
margin below 0.5° (the lag grows with the learning rate) at a tenth of a mirroring per step.

Convolutions: the noise is one receptive field per sample, ``x: (batch, C_in, *kernel)``, and the
layer's own convolution (its groups; no padding, stride or dilation needed for a single position)
gives ``y: (batch, C_out, 1, ...)``; ``Δ B`` is the convolution's weight correlation of ``y`` and
``x`` (:func:`torch.nn.grad.conv2d_weight`), exactly as for a linear layer.

Settings (layer attributes, set for a model with :func:`set_wm`, ``prealign.train(..., wm=...)``
or ``RunConfig.wm_*``): ``wm_lr`` η (default ``λ / σ²``: B converges to ``W``'s scale),
``wm_noise_std`` σ (:data:`WM_NOISE_STD`), ``wm_decay`` λ per mirror step, ``wm_steps`` mirror
steps per mirroring, ``wm_batch`` noise samples per mirror step, ``wm_noise`` (:data:`WM_NOISE`)
and ``wm_every`` optimizer steps per mirroring; a setting left unset takes its noise kind's default
(:data:`WM_DEFAULTS`). The paper gives the rule, not settings for our networks.

Mechanism (:mod:`prealign.feedback.step`, as for kp): a global ``torch.optim.Optimizer.step``
post-hook, and :func:`prealign.feedback_step` in a loop that updates ``W`` itself; the layers join
the same weakly held registry when their rule is set. A layer counts the steps of an optimizer that
holds its ``W`` in which ``W`` had a gradient (an optimizer skips a parameter without one), or the
calls of ``feedback_step`` after which its ``W`` had changed, and mirrors at every ``every``-th, in
the order of the optimizer's parameters (of ``model.modules()`` for ``feedback_step``). An update
of ``W`` without either is a warning at the next forward
(:class:`~prealign.feedback.learned.FeedbackNotUpdatedWarning`). Its
count since the last mirroring (``layer.wm_phase``) is training state: :func:`mirror_phases`, kept
by :func:`prealign.train`'s checkpoints; a loop of your own that resumes with ``every > 1`` must
restore it with :func:`set_mirror_phases`, or the mirrorings shift. Several forwards per optimizer
step, measurements, and changes of ``W`` outside a step (loading a checkpoint,
:func:`prealign.align`) trigger nothing. The noise is drawn from the layer's own stream after
:func:`prealign.seed_rules` (``prealign.train`` seeds it from its ``seed``), else from the global RNG
of ``W``'s device (:mod:`prealign.feedback.rng`); a checkpoint that saves
:func:`~prealign.feedback.rng.rules_rng_state` (or the global RNG states) resumes the very same noise. Cost per mirroring:
``steps`` × (one forward and one weight-gradient-sized product of a ``batch``-sample noise batch)
per layer.
"""
from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from .rules import RULES, generator

WM_NOISE_STD = 1.0
"""Default std σ of the mirror noise (the update is linear in ``x``, so σ only sets the scale of ``η``)."""
WM_NOISE = "orthogonal"
"""Default kind of mirror noise: ``"orthogonal"`` (exact, module docstring) or ``"gaussian"`` (the paper's)."""
NOISE_KINDS = ("gaussian", "orthogonal")
WM_DEFAULTS = {"gaussian": {"wm_decay": 0.01, "wm_steps": 1, "wm_batch": 512, "wm_every": 1},
               "orthogonal": {"wm_decay": 0.5, "wm_steps": 1, "wm_batch": None, "wm_every": 10}}
"""Defaults of λ (``wm_decay``), mirror steps per mirroring, noise samples ``N`` (``None``: the
layer's fan-in) and ``wm_every`` per noise kind, each tuned for its kind (module docstring)."""
WM_DECAY = WM_DEFAULTS[WM_NOISE]["wm_decay"]
"""Default decay λ of ``B`` per mirror step (the fraction of ``B`` forgotten each step), for the default noise."""
WM_STEPS = WM_DEFAULTS[WM_NOISE]["wm_steps"]
"""Default mirror steps per mirroring."""
WM_EVERY = WM_DEFAULTS[WM_NOISE]["wm_every"]
"""Default optimizer steps between mirrorings, for the default noise."""
WM_BATCH = WM_DEFAULTS["gaussian"]["wm_batch"]
"""Default noise samples per mirror step of Gaussian noise (orthogonal noise: the layer's fan-in)."""

_INT_SETTINGS = ("wm_steps", "wm_batch", "wm_every")
_CONV_WEIGHT = {3: torch.nn.grad.conv1d_weight, 4: torch.nn.grad.conv2d_weight, 5: torch.nn.grad.conv3d_weight}
_CONV = {3: F.conv1d, 4: F.conv2d, 5: F.conv3d}
_CONV_T = {3: F.conv_transpose1d, 4: F.conv_transpose2d, 5: F.conv_transpose3d}


def fan_in(layer: nn.Module) -> int:
    """Inputs one output of ``layer`` sees over all groups: ``in`` for a linear layer,
    ``C_in · prod(kernel)`` for a convolution (the size of one noise sample)."""
    w = layer.weight
    if _transposed(layer):  # weight (C_in, C_out, *kernel): one input pixel's channels feed the layer
        return w.shape[0]
    return w.shape[1] * getattr(layer, "groups", 1) * math.prod(w.shape[2:])


def _transposed(layer: nn.Module) -> bool:
    return isinstance(layer, nn.modules.conv._ConvNd) and layer.transposed


def wm_settings(layer: nn.Module) -> dict[str, float | int | str]:
    """The weight-mirror settings in effect for ``layer`` (its own, else its noise kind's defaults,
    :data:`WM_DEFAULTS`): ``wm_lr`` η (default ``wm_decay / wm_noise_std²``), ``wm_noise_std`` σ,
    ``wm_decay`` λ, ``wm_steps``, ``wm_batch`` (resolved: orthogonal's default is the fan-in),
    ``wm_noise`` and ``wm_every``."""
    noise = str(getattr(layer, "wm_noise", WM_NOISE))
    defaults = WM_DEFAULTS[noise]
    std = float(getattr(layer, "wm_noise_std", WM_NOISE_STD))
    decay = float(getattr(layer, "wm_decay", defaults["wm_decay"]))
    lr = getattr(layer, "wm_lr", None)
    batch = getattr(layer, "wm_batch", defaults["wm_batch"])
    return {"wm_lr": decay / std**2 if lr is None else float(lr), "wm_noise_std": std, "wm_decay": decay,
            "wm_steps": int(getattr(layer, "wm_steps", defaults["wm_steps"])),
            "wm_batch": fan_in(layer) if batch is None else int(batch), "wm_noise": noise,
            "wm_every": int(getattr(layer, "wm_every", defaults["wm_every"]))}


def check_mirrorable(layer: nn.Module, name: str = "layer") -> None:
    """Raise a one-line ConfigError unless ``layer`` is a linear map with a 2-D weight (Linear, an
    attention projection) or a 1-3-D (transposed) convolution (transposed: ``groups = 1``)."""
    conv = isinstance(layer, nn.modules.conv._ConvNd)
    if (not conv and layer.weight.dim() == 2) or (conv and not (layer.transposed and layer.groups != 1)):
        return
    raise ConfigError(f"rule wm mirrors linear maps (Linear, attention projections) and Conv/ConvTranspose 1d-3d "
                      f"layers (transposed: groups=1); {name} is a {type(layer).__name__}: use rule kp for it")


@functools.lru_cache(maxsize=8)
def _dct(m: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """The orthonormal DCT-II matrix ``(m, m)`` (rows: frequencies; ``C Cᵀ = Cᵀ C = I``), computed in
    float64 and kept per size, device and dtype (read-only: callers index it, which copies)."""
    k = torch.arange(m, dtype=torch.float64)[:, None]
    c = torch.cos(math.pi * (torch.arange(m, dtype=torch.float64)[None, :] + 0.5) * k / m) * math.sqrt(2.0 / m)
    c[0] /= math.sqrt(2.0)
    return c.to(device=device, dtype=dtype)


@functools.lru_cache(maxsize=16)
def _dct_factors(m: int, device: torch.device, dtype: torch.dtype, sign: int = -1) -> torch.Tensor:
    """``(m, 2)``: real and imaginary parts of ``w_k e^{sign·iπk/2m}``, ``k < m``, in ``dtype``; ``w_k`` is
    the orthonormal DCT scale (``sqrt(1/m)`` for ``k = 0``, else ``sqrt(2/m)``)."""
    k = torch.arange(m, dtype=torch.float64)
    w = torch.full((m,), math.sqrt(2.0 / m), dtype=torch.float64)
    w[0] = math.sqrt(1.0 / m)
    angle = sign * math.pi * k / (2 * m)
    return torch.stack([w * torch.cos(angle), w * torch.sin(angle)], dim=-1).to(device=device, dtype=dtype)


def dct(x: torch.Tensor, m: int) -> torch.Tensor:
    """``x C[:, :n]ᵀ``: the orthonormal DCT-II (:func:`_dct`'s ``C``, size ``m``) of each row of
    ``x: (r, n)``, zero-padded to ``m ≥ n``; ``(r, m)``. Via one real FFT of length ``2m`` per row:
    ``(C v)_k = Re(w_k e^{-iπk/2m} FFT_{2m}(v)_k)``."""
    spectrum = torch.view_as_real(torch.fft.rfft(x, n=2 * m, dim=-1)[..., :m])  # (r, m, 2)
    f = _dct_factors(m, x.device, x.dtype)
    return torch.addcmul(spectrum[..., 0] * f[:, 0], spectrum[..., 1], f[:, 1], value=-1.0)


def idct(z: torch.Tensor, n: int | None = None) -> torch.Tensor:
    """``(z C)[:, :n]``: the orthonormal DCT-III (the inverse of :func:`dct`) of each row of ``z: (r, m)``,
    its first ``n`` (default ``m``) entries. ``(Cᵀ u)_j = Re Σ_k w_k u_k e^{iπk(2j+1)/2m}``, evaluated with
    one inverse real FFT of length ``2m`` (which doubles the terms ``k ≥ 1``: the ``k = 0`` term is added
    back once)."""
    r, m = z.shape
    spectrum = z.new_zeros(r, m + 1, 2)  # w_k e^{+iπk/2m} z_k, and 0 at k = m
    torch.mul(z.unsqueeze(-1), _dct_factors(m, z.device, z.dtype, +1), out=spectrum[:, :m])
    out = torch.fft.irfft(torch.view_as_complex(spectrum), n=2 * m, dim=-1)[:, :m if n is None else n].mul_(m)
    return out.add_(z[:, :1], alpha=0.5 * math.sqrt(1.0 / m))


class OrthogonalDesign:
    """The orthogonal noise batch ``x = s · (P C D)[:batch, :n]``, ``s = σ sqrt(m)``, ``m = max(batch,
    n)`` (:func:`noise`), kept in factored form: ``rows`` (the DCT rows ``P`` picks, ``(batch,)``),
    ``signs`` (``D``, ``(n,)``) and ``scale`` ``s``. Products with ``x`` then cost ``O(m log m)`` per
    row (FFT-based DCTs, :func:`dct`/:func:`idct`) instead of ``O(batch · n)``; :meth:`dense` forms it.

    With ``batch = m`` the samples are all ``m`` rows of ``C``: ``P`` only orders them, and the order
    of samples changes no sum over them (``yᵀx = Σ_k y_k x_k``), so :meth:`forward` and
    :meth:`correlate` then list the samples in the order of ``C``'s rows (no permutation pass).
    """

    def __init__(self, batch: int, n: int, std: float, *, device=None, dtype=None,
                 generator: torch.Generator | None = None):
        self.batch, self.n, self.m = batch, n, max(batch, n)
        self.device = torch.device(device or "cpu")
        self.dtype = dtype or torch.get_default_dtype()
        self.rows = torch.randperm(self.m, device=device, generator=generator)[:batch]
        self.signs = torch.randint(0, 2, (n,), device=device, generator=generator).mul_(2).sub_(1)
        self.scale = std * math.sqrt(self.m)

    def dense(self) -> torch.Tensor:
        """``x: (batch, n)``, samples in the order ``P`` gives."""
        basis = _dct(self.m, self.device, self.dtype)
        return basis[self.rows, :self.n].mul_(self.signs.to(basis.dtype)).mul_(self.scale)

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        """``(x wᵀ)ᵀ: (out, batch)`` for ``w: (out, n)``: the response ``w x_k`` of a linear map to each
        noise sample ``x_k``, as columns (``x wᵀ = s P C (D wᵀ)``: a DCT of each row of ``w D``, then
        ``P``'s rows; with ``batch = m``, in the order of ``C``'s rows)."""
        y_t = dct(w * self.signs.to(w.dtype), self.m).mul_(self.scale)
        return y_t if self.batch == self.m else y_t[:, self.rows]

    def correlate(self, y_t: torch.Tensor) -> torch.Tensor:
        """``yᵀ x: (out, n)`` from ``y_t = yᵀ: (out, batch)``, the activities of the samples as
        :meth:`forward` lists them: ``yᵀ x = s (yᵀ P C)[:, :n] D``, an inverse DCT (:func:`idct`) of the
        activities placed at their samples' rows of ``C``. Reads ``y`` and the design only."""
        if self.batch == self.m:
            placed = y_t
        else:
            placed = y_t.new_zeros(y_t.shape[0], self.m)
            placed[:, self.rows] = y_t
        return idct(placed, self.n).mul_(self.signs.to(y_t.dtype).mul_(self.scale))


def noise(kind: str, batch: int, n: int, std: float, *, device=None, dtype=None,
          generator: torch.Generator | None = None) -> torch.Tensor:
    """Mirror noise ``x: (batch, n)`` from ``generator`` (``None``: the global RNG of ``device``).

    ``"gaussian"``: i.i.d. ``N(0, σ²)``, ``E[xᵀx] = batch σ² I`` with sampling error.
    ``"orthogonal"``: ``σ sqrt(m) · (P C D)[:batch, :n]`` with ``m = max(batch, n)``, ``C`` the
    orthonormal DCT-II matrix, ``P`` a uniformly random row permutation and ``D`` random column
    signs (a random orthogonal design, drawn afresh each call; :class:`OrthogonalDesign`). For
    ``batch ≥ n`` its columns are orthogonal: ``xᵀx = batch σ² I`` exactly. For ``batch < n`` its
    rows are orthogonal, ``xᵀx`` is ``n σ²`` times the projection onto a random
    ``batch``-dimensional subspace and ``E[xᵀx] = batch σ² I`` (unbiased); its error has
    ≈ ``(1 − batch / n)`` times the variance of Gaussian noise's."""
    if kind == "gaussian":
        return torch.randn(batch, n, device=device, dtype=dtype, generator=generator).mul_(std)
    return OrthogonalDesign(batch, n, std, device=device, dtype=dtype, generator=generator).dense()


def _factored(layer: nn.Module, kind: str) -> bool:
    """Whether the mirror of ``layer`` multiplies by the orthogonal design in factored form: a linear
    map of ``W.flatten(1)`` on one noise sample (Linear, attention projections, convolutions with
    ``groups = 1``), float32/float64."""
    if kind != "orthogonal" or layer.weight.dtype not in (torch.float32, torch.float64):
        return False
    return not isinstance(layer, nn.modules.conv._ConvNd) or (not layer.transposed and layer.groups == 1)


@torch.no_grad()
def mirror_step(layer: nn.Module, lr: float, std: float, decay: float, batch: int, kind: str = "gaussian") -> None:
    """One mirror step of ``layer`` in place: noise ``x`` of ``kind`` (:func:`noise`), forward
    activity ``y = W x``, then ``B ← (1 − decay) B + (lr / batch) · corr(y, x)`` (module
    docstring). ``B`` is formed from ``x`` and ``y`` only.

    Under orthogonal noise, for maps that are linear in ``W.flatten(1)`` on one sample (Linear,
    attention projections, convolutions with ``groups = 1``), both products — the activity ``y`` of
    the whole batch and ``yᵀx`` — use the design's factored form (:class:`OrthogonalDesign`: FFT-based
    DCTs, ``O(out · m log m)`` instead of ``O(out · m · n)``): the same numbers up to rounding."""
    check_mirrorable(layer)
    w, b = layer.weight, layer.feedback
    n, gen = fan_in(layer), generator(layer)
    if _factored(layer, kind):
        design = OrthogonalDesign(batch, n, std, device=w.device, dtype=w.dtype, generator=gen)
        y_t = design.forward(w.reshape(w.shape[0], -1))  # the layer's forward activity, (out, batch)
        b.mul_(1.0 - decay).add_(design.correlate(y_t).view_as(b), alpha=lr / batch)
        return
    x = noise(kind, batch, n, std, device=w.device, dtype=w.dtype, generator=gen)
    if not isinstance(layer, nn.modules.conv._ConvNd):  # a linear map: Linear, an attention projection
        y = F.linear(x, w)  # the layer's forward activity, (batch, out)
        hebb = y.t() @ x  # (out, in): what the feedback synapse B[o, i] sees, y_o x_i summed over samples
    elif layer.transposed:  # one input pixel -> (batch, C_out, *kernel): the layer's whole response to it
        y = _CONV_T[w.dim()](x.view(batch, w.shape[0], *([1] * (w.dim() - 2))), w)
        hebb = (x.t() @ y.flatten(1)).view_as(b)  # (C_in, C_out·kernel): B[i, o, k] sees x_i y_(o, k)
    else:
        x = x.view(batch, w.shape[1] * layer.groups, *w.shape[2:])
        y = _CONV[w.dim()](x, w, None, 1, 0, 1, layer.groups)  # one receptive field -> (batch, C_out, 1, ...)
        hebb = _CONV_WEIGHT[w.dim()](x, b.shape, y, 1, 0, 1, layer.groups)
    b.mul_(1.0 - decay).add_(hebb, alpha=lr / batch)


def mirror_layers(layers) -> None:
    """The mirror phase after an update of ``W`` of each of ``layers`` (in order): count the update,
    and run ``wm_steps`` mirror steps at every ``wm_every``-th."""
    for layer in layers:
        d = layer.__dict__
        every = d.get("wm_every")
        if every is None:
            every = WM_DEFAULTS[d.get("wm_noise", WM_NOISE)]["wm_every"]
        phase = d.get("wm_phase", 0) + 1
        if phase < every:
            d["wm_phase"] = phase
            continue
        d["wm_phase"] = 0
        s = wm_settings(layer)
        for _ in range(s["wm_steps"]):
            mirror_step(layer, s["wm_lr"], s["wm_noise_std"], s["wm_decay"], s["wm_batch"], s["wm_noise"])


def mirror_phases(model: nn.Module) -> dict[str, int]:
    """``{name: optimizer steps since the layer last mirrored}`` of ``model``'s wm layers: with
    ``wm_every > 1``, part of the training state (:func:`prealign.train`'s checkpoints keep it)."""
    return {name: int(getattr(layer, "wm_phase", 0)) for name, layer in mirroring_layers(model)}


def set_mirror_phases(model: nn.Module, phases: dict[str, int]) -> None:
    """Restore what :func:`mirror_phases` returned (a resumed run mirrors at the same steps)."""
    for name, layer in mirroring_layers(model):
        layer.wm_phase = int(phases.get(name, 0))


def random_draws(layer: nn.Module) -> float:
    """Random numbers the mirror of ``layer`` draws per optimizer step (on average over ``wm_every``)."""
    s = wm_settings(layer)
    n = fan_in(layer)
    per_step = s["wm_batch"] * n if s["wm_noise"] == "gaussian" else max(s["wm_batch"], n) + n
    return s["wm_steps"] * per_step / s["wm_every"]


def mirroring_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """``[(name, layer)]`` of the feedback layers of ``model`` under a rule that mirrors."""
    from .convert import feedback_layers

    return [(name, layer) for name, layer in feedback_layers(model) if RULES[layer.rule].mirrors]


_RANGES = {"wm_lr": (lambda v: v > 0, "> 0"), "wm_noise_std": (lambda v: v > 0, "> 0"),
           "wm_decay": (lambda v: 0 <= v < 1, "in [0, 1) per mirror step"),
           "wm_steps": (lambda v: v >= 1 and v.is_integer(), "an integer >= 1"),
           "wm_batch": (lambda v: v >= 1 and v.is_integer(), "an integer >= 1"),
           "wm_every": (lambda v: v >= 1 and v.is_integer(), "an integer >= 1")}


def check_wm_setting(what: str, key: str, value) -> None:
    """Raise a one-line ConfigError naming ``what`` unless ``value`` is in range for the setting ``key``."""
    if key == "wm_noise":
        if value not in NOISE_KINDS:
            raise ConfigError(f"{what} must be one of {', '.join(NOISE_KINDS)}, got {value!r}")
        return
    ok, need = _RANGES[key]
    try:
        good = not isinstance(value, (bool, str)) and math.isfinite(float(value)) and ok(float(value))
    except (TypeError, ValueError):
        good = False
    if not good:
        raise ConfigError(f"{what} must be {need}, got {value!r}")


def set_wm(model: nn.Module, *, lr: float | None = None, noise_std: float | None = None, decay: float | None = None,
           steps: int | None = None, batch: int | None = None, noise: str | None = None,
           every: int | None = None) -> nn.Module:
    """Set the weight-mirror settings (module docstring) of every layer of ``model`` under ``wm``;
    ``None`` keeps a setting as it is (an unset one follows its noise kind's default,
    :data:`WM_DEFAULTS`). Raises a one-line ConfigError for a value out of range (``lr > 0``,
    ``noise_std > 0``, ``0 <= decay < 1``, ``steps >= 1``, ``batch >= 1``, ``every >= 1``,
    ``noise`` in :data:`NOISE_KINDS`) or when the model has no ``wm`` layer (the settings would be
    ignored). Returns ``model``."""
    given = {"wm_lr": lr, "wm_noise_std": noise_std, "wm_decay": decay, "wm_steps": steps, "wm_batch": batch,
             "wm_noise": noise, "wm_every": every}
    for key, value in given.items():
        if value is not None:
            check_wm_setting(key, key, value)
    layers = mirroring_layers(model)
    if not layers:
        from .convert import feedback_layers
        rules = sorted({layer.rule for _, layer in feedback_layers(model)}) or ["no feedback layers"]
        raise ConfigError(f"weight-mirror settings apply only to layers under wm; this model has {', '.join(rules)}: "
                          "drop the wm settings or use method wm")
    for name, layer in layers:
        check_mirrorable(layer, name)
        for key, value in given.items():
            if value is not None:
                setattr(layer, key, value if key == "wm_noise" else int(value) if key in _INT_SETTINGS else float(value))
    return model
