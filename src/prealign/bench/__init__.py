"""The benchmark suite behind ``prealign bench``: ratios measured side by side in one run.

Every row compares two things, A and B, on this machine in this process: repetitions of A and B
are interleaved (A B B A A B ...), so drifts in machine load hit both; the row's ratio is the
median over repetitions of the paired ratio ``A_i / B_i`` (or its inverse, so that the target
says whether higher or lower is better), and the *spread* is the interquartile range of those
paired ratios. Rows:

1. ``step``     step time of every rule / BP (forward, cross-entropy, backward, Adam step) for the
                IFA paper's 784-512-512-10 MLP and the LeNet variant at batch 128. Target ≤ 1.05
                (brsf, wm: ≤ 1.10, :data:`STEP_TARGETS`).
2. ``recipe``   epoch time of the usual PyTorch recipe (torchvision-style map-style Dataset that
                normalises one image per ``__getitem__``, shuffling ``DataLoader``, BioTorch-style
                ``autograd.Function`` FA layers) / :func:`prealign.train`, 784-100-10, batch 64,
                Adam, on MNIST-5k. Target ≥ 2.
3. ``flops``    achieved training FLOP/s of an FA step of 784-512-512-10 at batch 128 / FLOP/s of a
                large float32 GEMM. FLOPs counted as ``6 · batch · Σ n_in·n_out`` per step (forward,
                input error, weight gradient: 2 each per multiply-add). Target ≥ 0.5.
4. ``hessian``  PyHessian / :mod:`prealign.analysis.hessian`, time to the same answer: the top
                eigenvalue to 1e-3 relative error and the Hessian trace to a standard error of 2 %
                of its value (quick: 5 %), both checked against the exact Hessian of a 64-32-10
                MLP on UCI digits (1,000 samples). Target ≥ 2.
5. ``sweep``    throughput of N single-threaded worker processes / one process using all cores, on
                a sweep of small :func:`prealign.train` runs (CPU), with one run per worker task and
                with each worker training its runs as one batched model (what ``run_sweep`` does
                for such runs). Target ≥ 1.7 at N = 2. Plus ``run_sweep`` end to end with
                ``batch_models`` off / ``"auto"``.
6. ``batched``  S seeds trained one after another with :func:`prealign.train` / the same S runs as
                one batched group (:func:`prealign.run.batched.train_batched`), S = 8 and 16, with
                the ceiling any bitwise engine can reach (:mod:`prealign.bench.groups`). Targets
                ≥ 2.0 (8) and ≥ 2.5 (16).
7. ``zoo``      FA / BP and DFA / BP step time (as row 1) of ResNet-20 and the small ViT
                (:mod:`prealign.models`) on CIFAR-shaped 3×32×32 batches of 128. Target ≤ 1.05.

``run_bench(quick=True)`` uses reduced sizes and repetitions (well under a minute). Every row uses
only the embedded data sets (MNIST-5k), so the suite runs on a fresh machine.
"""
from __future__ import annotations

import copy
import math
import os
import platform
import statistics
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..device import resolve_device
from ..errors import ConfigError, UnknownNameError

MLP_DIMS = [784, 512, 512, 10]
SMALL_DIMS = [784, 100, 10]
MNIST_MEAN, MNIST_STD = 0.1307, 0.3081  # torchvision's MNIST Normalize constants


@dataclass
class BenchRow:
    """One line of the table. ``ratio``: median(A)/median(B) oriented as the target says;
    ``spread``: (25th, 75th percentile) of the per-repetition paired ratios."""

    key: str
    title: str
    ratio: float | None
    target: str
    spread: tuple[float, float] | None = None
    passed: bool | None = None
    reps: int = 0
    a_seconds: float | None = None  # median time of one repetition of A
    b_seconds: float | None = None
    details: dict = field(default_factory=dict)
    skipped: str | None = None

    def to_dict(self) -> dict:
        d = asdict(self)
        d["spread"] = list(self.spread) if self.spread is not None else None
        return d


# -- timing ------------------------------------------------------------------------------------
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def interleaved(fns: dict[str, Callable[[], float | None]], reps: int, device: torch.device,
                warmup: int = 1) -> dict[str, list[float]]:
    """Time each callable ``reps`` times, interleaved, order reversed every repetition.

    A callable may return its own measured seconds (e.g. a trainer's epoch time without its
    set-up); otherwise its wall time is used. Returns ``{name: [seconds per repetition]}``.
    """
    names = list(fns)
    for _ in range(warmup):
        for name in names:
            fns[name]()
    times = {name: [] for name in names}
    for r in range(reps):
        for name in (names if r % 2 == 0 else names[::-1]):
            _sync(device)
            start = time.perf_counter()
            own = fns[name]()
            _sync(device)
            times[name].append(own if own is not None else time.perf_counter() - start)
    return times


def _quartiles(values: list[float]) -> tuple[float, float]:
    if len(values) == 1:
        return values[0], values[0]
    q = statistics.quantiles(values, n=4, method="inclusive")
    return q[0], q[2]


def _row(key, title, target, a: list[float], b: list[float], *, invert: bool = False, scale: float = 1.0,
         details: dict | None = None) -> BenchRow:
    """Ratio: the median over repetitions of the paired ratio ``scale · a_i/b_i`` (``invert``: ``b_i/a_i``),
    robust to load drifting between repetitions; spread: its interquartile range."""
    ma, mb = statistics.median(a), statistics.median(b)
    pairs = [scale * ((y / x) if invert else (x / y)) for x, y in zip(a, b)]
    ratio = statistics.median(pairs)
    op, bound = target.split()
    passed = ratio <= float(bound) if op == "<=" else ratio >= float(bound)
    return BenchRow(key, title, ratio, target, _quartiles(pairs), passed, len(a), ma, mb, details or {})


# -- shared pieces -------------------------------------------------------------------------------
def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _adam_step(model: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor) -> None:
    loss = F.cross_entropy(model(x), y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()


def _steps(model, x, y, n):
    from ..run.trainer import _make_optimizer  # the trainer's own Adam, so the bench follows what users run

    opt = _make_optimizer("adam", model.parameters(), 1e-4, 0.0, 0.0)

    def run():
        for _ in range(n):
            _adam_step(model, opt, x, y)
    return run


def _load(name: str, n_train: int | None = None):
    from ..data import load

    ds = load(name)
    if n_train is not None and n_train < len(ds.x_train):
        ds = ds.subset(n_train, stratified=True, seed=0)
    return ds


def mlp_flops_per_step(dims, batch: int) -> int:
    """``6 · batch · Σ n_in·n_out``: forward, input error and weight gradient, 2 FLOPs per multiply-add.

    (FA's and BP's first layer skip the input error, so the work done is ``2·batch·dims[0]·dims[1]``
    less; the convention counts it, as FLOP/s figures for training usually do.)"""
    return 6 * batch * sum(a * b for a, b in zip(dims[:-1], dims[1:]))


def machine_info(device: torch.device) -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    info = {"cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
            "python": platform.python_version(), "device": str(device)}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


# -- row 1: step time per rule / BP ----------------------------------------------------------------
STEP_TARGETS = {"brsf": "<= 1.10", "wm": "<= 1.10"}
"""Step-time targets over BP (issue 22) where a rule's definition costs work BP does not do: brsf
draws W-sized random magnitudes every step, wm runs its mirror (two noise-driven products per
layer) every tenth; every other rule ``<= 1.05``."""
def bench_step(device: torch.device, quick: bool) -> list[BenchRow]:
    """Every rule vs BP: same weights, same batch, same Adam; one repetition = ``n`` training steps."""
    from .. import lenet, mlp
    from ..feedback import RULES

    batch = 128
    reps = 3 if quick else 15
    specs = [
        ("mlp", "784-512-512-10", lambda rule: mlp(MLP_DIMS, rule, generator=_gen(0)), (batch, 784), 3 if quick else 20),
        ("lenet", "LeNet", lambda rule: lenet((1, 28, 28), 10, rule, generator=_gen(0)), (batch, 1, 28, 28), 2 if quick else 6),
    ]
    rules = ["bp", "fa"] if quick else list(RULES)
    rows = []
    for key, label, build, shape, n in specs:
        x = torch.randn(shape, generator=_gen(1)).to(device)
        y = torch.randint(0, 10, (batch,), generator=_gen(2)).to(device)
        fns = {rule: _steps(build(rule).to(device), x, y, n) for rule in rules}
        times = interleaved(fns, reps, device)
        for rule in rules:
            if rule == "bp":
                continue
            rows.append(_row(f"step/{key}/{rule}", f"{rule.upper()} / BP step time, {label}, batch {batch}",
                             STEP_TARGETS.get(rule, "<= 1.05"), times[rule], times["bp"], details={"steps_per_rep": n,
                                                                "ms_per_step": statistics.median(times[rule]) / n * 1e3,
                                                                "bp_ms_per_step": statistics.median(times["bp"]) / n * 1e3}))
    return rows


# -- row 3: achieved FLOP/s / GEMM FLOP/s -------------------------------------------------------------
def bench_flops(device: torch.device, quick: bool) -> BenchRow:
    """FA training steps of 784-512-512-10 (batch 128) interleaved with a square float32 GEMM."""
    from .. import mlp

    batch, n = 128, (3 if quick else 10)
    size = (1024 if quick else 2048) if device.type == "cpu" else 8192
    x = torch.randn(batch, 784, generator=_gen(1)).to(device)
    y = torch.randint(0, 10, (batch,), generator=_gen(2)).to(device)
    train = _steps(mlp(MLP_DIMS, "fa", generator=_gen(0)).to(device), x, y, n)
    a = torch.randn(size, size, generator=_gen(3)).to(device)
    b = torch.randn(size, size, generator=_gen(4)).to(device)
    c = torch.empty(size, size, device=device)
    gemm_reps = 1 if device.type == "cpu" else 20

    def gemm():
        for _ in range(gemm_reps):
            torch.mm(a, b, out=c)

    times = interleaved({"train": train, "gemm": gemm}, 3 if quick else 7, device)
    step_flops = mlp_flops_per_step(MLP_DIMS, batch)
    gemm_flops = 2 * size ** 3 * gemm_reps
    # achieved/peak = (step_flops·n / t_train) / (gemm_flops / t_gemm) = scale · t_gemm / t_train
    row = _row("flops/mlp/fa", "achieved FA training FLOP/s / GEMM FLOP/s, 784-512-512-10, batch 128", ">= 0.5",
               times["train"], times["gemm"], invert=True, scale=step_flops * n / gemm_flops)
    row.details = {"flops_per_step": step_flops, "flop_count": "6*batch*sum(n_in*n_out)",
                   "train_gflops": step_flops * n / row.a_seconds / 1e9, "gemm_gflops": gemm_flops / row.b_seconds / 1e9,
                   "gemm_size": size}
    return row


# -- row 2: the usual PyTorch recipe / prealign's trainer ----------------------------------------------
class TorchvisionStyleDataset(torch.utils.data.Dataset):
    """Map-style data set as torchvision's MNIST with ``ToTensor()`` and ``Normalize((0.1307,), (0.3081,))``:
    uint8 images ``(N, 28, 28)``; each ``__getitem__`` returns ``((x/255 − 0.1307)/0.3081`` as float
    ``(1, 28, 28)``, label int). (torchvision also round-trips through a PIL image, which costs more.)"""

    def __init__(self, images: torch.Tensor, targets: torch.Tensor):
        self.data, self.targets = images, targets

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int):
        img = self.data[index].to(torch.float32).div(255).unsqueeze(0)
        return (img - MNIST_MEAN) / MNIST_STD, int(self.targets[index])


class BioTorchFAFunction(torch.autograd.Function):
    """Feedback alignment as BioTorch writes it: saves ``weight`` and ``weight_backward``;
    ``grad_input = grad_output @ B``, ``grad_weight = grad_outputᵀ @ input``, ``grad_bias = Σ grad_output``."""

    @staticmethod
    def forward(ctx, input, weight, weight_backward, bias=None):
        ctx.save_for_backward(input, weight, weight_backward, bias)
        output = input.mm(weight.t())
        if bias is not None:
            output += bias.unsqueeze(0).expand_as(output)
        return output

    @staticmethod
    def backward(ctx, grad_output):
        input, weight, weight_backward, bias = ctx.saved_tensors
        grad_input = grad_weight = grad_bias = None
        if ctx.needs_input_grad[0]:
            grad_input = grad_output.mm(weight_backward)
        if ctx.needs_input_grad[1]:
            grad_weight = grad_output.t().mm(input)
        if bias is not None and ctx.needs_input_grad[3]:
            grad_bias = grad_output.sum(0)
        return grad_input, grad_weight, None, grad_bias


class BioTorchFALinear(nn.Linear):
    """``nn.Linear`` with a fixed ``weight_backward`` parameter (``requires_grad=False``), as in BioTorch."""

    def __init__(self, in_features: int, out_features: int):
        super().__init__(in_features, out_features)
        self.weight_backward = nn.Parameter(torch.empty_like(self.weight), requires_grad=False)

    def forward(self, x):
        return BioTorchFAFunction.apply(x, self.weight, self.weight_backward, self.bias)


def usual_recipe_model(reference: nn.Module) -> nn.Module:
    """A BioTorch-style 784-100-10 with the weights and feedback of a prealign ``mlp`` (same init)."""
    linears = [m for m in reference.modules() if isinstance(m, nn.Linear)]
    layers: list[nn.Module] = [nn.Flatten()]
    for i, lin in enumerate(linears):
        fa = BioTorchFALinear(lin.in_features, lin.out_features)
        with torch.no_grad():
            fa.weight.copy_(lin.weight)
            fa.bias.copy_(lin.bias)
            fa.weight_backward.copy_(lin.feedback)
        layers.append(fa)
        if i < len(linears) - 1:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def bench_recipe(device: torch.device, quick: bool) -> BenchRow:
    """One training epoch each: the usual recipe vs :func:`prealign.train` (its epoch ``seconds``), on
    MNIST-5k (1,500 training images quick, all 4,000 full): embedded, so the row runs on any machine."""
    from .. import mlp
    from ..run.trainer import TensorData, train

    ds = _load("mnist5k", 1500 if quick else None)
    images = (ds.x_train[:, 0] * 255).round().to(torch.uint8)  # the raw uint8 images
    x_norm = (images.to(torch.float32) / 255 - MNIST_MEAN) / MNIST_STD
    xt_norm = (ds.x_test[:2000] - MNIST_MEAN) / MNIST_STD
    data = TensorData(x_norm.unsqueeze(1), ds.y_train, xt_norm, ds.y_test[:2000], ds.num_classes, ds.name)
    reference = mlp(SMALL_DIMS, "fa", generator=_gen(0))
    usual = usual_recipe_model(reference).to(device)
    usual_opt = torch.optim.Adam(usual.parameters(), lr=1e-4)
    loader = torch.utils.data.DataLoader(TorchvisionStyleDataset(images, ds.y_train), batch_size=64, shuffle=True,
                                         num_workers=0)
    ours = copy.deepcopy(reference)
    counter = iter(range(10 ** 9))

    def usual_epoch():
        for xb, yb in loader:
            _adam_step(usual, usual_opt, xb.to(device), yb.to(device))

    def prealign_epoch():
        res = train(ours, data, epochs=1, batch_size=64, lr=1e-4, seed=next(counter), device=device,
                    progress=False, grad_alignment=False)
        return res.curves[1]["seconds"]

    times = interleaved({"usual": usual_epoch, "prealign": prealign_epoch}, 2 if quick else 5, device)
    row = _row("recipe/mlp", "usual PyTorch recipe / prealign.train epoch time, 784-100-10, batch 64", ">= 2",
               times["usual"], times["prealign"])
    row.details = {"dataset": ds.name, "n_train": len(images), "usual_epoch_s": row.a_seconds,
                   "prealign_epoch_s": row.b_seconds,
                   "usual": "map-style Dataset normalising one uint8 image per __getitem__, DataLoader(shuffle=True, "
                            "num_workers=0, batch 64), BioTorch-style autograd.Function FA, Adam lr 1e-4",
                   "prealign": "prealign.train epoch 'seconds' (training steps; evaluation excluded on both sides)"}
    return row


# -- row 4: PyHessian / prealign.analysis.hessian, time to equal accuracy --------------------------------
EIG_RTOL = 1e-3  # top eigenvalue: relative error to the exact value at most this
TOL_LADDER = (1e-3, 3e-4, 1e-4, 3e-5, 1e-5, 3e-6, 1e-6)  # stopping tolerances tried, loosest first


def exact_hessian(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The dense Hessian ``(P, P)`` of the mean cross-entropy of a float64 copy of ``model`` on ``(x, y)``, by
    plain autograd (double backward of the gradient against identity rows, 512 at a time): the
    reference the row's answers are checked against, independent of :mod:`prealign.analysis.hessian`."""
    m64 = copy.deepcopy(model).double()
    params = list(m64.parameters())
    grads = torch.autograd.grad(F.cross_entropy(m64(x.double()), y), params, create_graph=True)
    n = sum(p.numel() for p in params)
    rows = []
    for start in range(0, n, 512):
        k = min(512, n - start)
        eye = torch.zeros(k, n, dtype=torch.float64, device=x.device)
        eye[torch.arange(k), torch.arange(start, start + k)] = 1.0
        parts = torch.split(eye, [p.numel() for p in params], dim=1)
        cols = torch.autograd.grad(grads, params, [c.view(k, *p.shape) for c, p in zip(parts, params)],
                                   retain_graph=True, is_grads_batched=True)
        rows.append(torch.cat([c.reshape(k, -1) for c in cols], 1))
    return torch.cat(rows)


def hessian_answer_failures(answer: dict, reference: dict, *, eig_rtol: float, trace_rse: float) -> list[str]:
    """What keeps ``answer`` (``eig``, ``trace``, ``trace_se``) from the row's accuracy, judged
    against the exact ``reference`` (``eig``, ``trace``): the eigenvalue's relative error above
    ``eig_rtol``; a trace standard error above ``trace_rse · |tr|`` (10 % slack for the sampled
    standard error); a trace more than 4 standard errors from the exact one. Empty: accurate."""
    out = []
    err = abs(answer["eig"] - reference["eig"]) / abs(reference["eig"])
    if not err <= eig_rtol:
        out.append(f"top eigenvalue {answer['eig']:.6g} is {err:.2e} off the exact {reference['eig']:.6g} (> {eig_rtol:g})")
    if "trace" in answer:
        se, target = answer["trace_se"], trace_rse * abs(reference["trace"])
        if not se <= 1.1 * target:
            out.append(f"trace standard error {se:.3g} is above {trace_rse:g} of the exact trace ({target:.3g})")
        if not abs(answer["trace"] - reference["trace"]) <= 4 * se:
            out.append(f"trace {answer['trace']:.6g} is more than 4 standard errors ({se:.3g}) from the exact "
                       f"{reference['trace']:.6g}")
    return out


def loosest_accurate(ladder, solve: Callable[[float], dict], reference: dict, *, eig_rtol: float) -> tuple[float, dict]:
    """The loosest stopping tolerance of ``ladder`` whose eigenvalue ``solve(tol)["eig"]`` is within
    ``eig_rtol`` of the exact one, and that answer; a one-line PrealignError when none is."""
    from ..errors import PrealignError

    for tol in ladder:
        answer = solve(tol)
        if not hessian_answer_failures(answer, reference, eig_rtol=eig_rtol, trace_rse=math.inf):
            return tol, answer
    raise PrealignError(f"no stopping tolerance in {list(ladder)} gives the top eigenvalue to {eig_rtol:g} "
                        f"(last answer {answer['eig']:.6g}, exact {reference['eig']:.6g}); extend the ladder")


def bench_hessian(device: torch.device, quick: bool, *, eig_rtol: float = EIG_RTOL, trace_rse: float | None = None,
                  ladder=TOL_LADDER) -> BenchRow:
    """Time to the same answer: the top eigenvalue to ``eig_rtol`` relative error and the trace to
    a standard error of ``trace_rse`` of its value (2 %; quick 5 %), checked against the exact Hessian.

    PyHessian: power iteration at the loosest tolerance of ``ladder`` that meets ``eig_rtol``, and
    Hutchinson with the number of probes its pilot variance says the standard error needs.
    prealign: :func:`~prealign.analysis.hessian.lanczos_top_eigen` at the loosest ``rtol`` of the
    same ladder that meets it, and :func:`~prealign.analysis.hessian.deflated_trace` (a Lanczos
    basis, then batched projected Rademacher probes until the standard error is met). Both sides'
    timed answers are checked again; a miss fails the row and is listed in ``details``.
    """
    title = "PyHessian / prealign time to equal accuracy"
    try:
        from pyhessian import hessian as PyHessian
    except ImportError:
        return BenchRow("hessian/mlp", title, None, ">= 2",
                        skipped="PyHessian is not installed (pip install --no-deps pyhessian; it needs only numpy and torch)")
    from .. import mlp
    from ..analysis.hessian import deflated_trace, hessian_operator, lanczos_top_eigen

    hidden, n, reps, deflate = (16, 300, 1, 20) if quick else (32, 1000, 3, 100)
    trace_rse = trace_rse if trace_rse is not None else (0.05 if quick else 0.02)
    ds = _load("digits")
    x, y = ds.x_train[:n].reshape(n, -1).to(device), ds.y_train[:n].to(device)
    model = mlp([x.shape[1], hidden, 10], "bp", generator=_gen(0)).to(device)
    t0 = time.perf_counter()
    h = exact_hessian(model, x, y)
    spectrum = torch.linalg.eigvalsh(h)
    ref = {"eig": float(spectrum[-1]), "trace": float(h.diagonal().sum())}
    ref_seconds = time.perf_counter() - t0
    del h
    if abs(float(spectrum[0])) >= ref["eig"]:
        raise ConfigError("the bench model's largest-magnitude eigenvalue is negative: power iteration would not "
                          "find the top one; choose another seed")

    def pyhessian(tol: float, probes: int = 0) -> dict:
        torch.manual_seed(0)  # PyHessian draws its start vector and probes from the global RNG
        with warnings.catch_warnings():  # PyHessian's backward(create_graph=True) warns about a reference cycle
            warnings.simplefilter("ignore", UserWarning)
            hess = PyHessian(model, nn.CrossEntropyLoss(), data=(x, y), cuda=device.type == "cuda")
        out = {"eig": float(hess.eigenvalues(maxIter=100_000, tol=tol, top_n=1)[0][0])}
        if probes:
            samples = np.asarray(hess.trace(maxIter=probes, tol=-math.inf))
            out.update(trace=float(samples.mean()), trace_se=float(samples.std(ddof=1) / math.sqrt(len(samples))),
                       probes=len(samples), samples_std=float(samples.std(ddof=1)))
        model.zero_grad(set_to_none=True)
        return out

    def prealign(tol: float, with_trace: bool = False) -> dict:
        op = hessian_operator(model, None, x, y)
        top = lanczos_top_eigen(op, rtol=tol)
        out = {"eig": top.value, "eig_products": top.products}
        if with_trace:
            out["trace"], out["trace_se"], out["trace_products"] = deflated_trace(
                op, rel_stderr=trace_rse, deflate=deflate, batch=32)
        return out

    py_tol, _ = loosest_accurate(ladder, pyhessian, ref, eig_rtol=eig_rtol)
    pa_tol, _ = loosest_accurate(ladder, prealign, ref, eig_rtol=eig_rtol)
    pilot = pyhessian(py_tol, probes=100)  # the probes PyHessian needs for the standard error (+20 %)
    py_probes = max(2, math.ceil(1.2 * (pilot["samples_std"] / (trace_rse * abs(ref["trace"]))) ** 2))
    answers: dict[str, dict] = {}

    def timed(name, fn):
        def run():
            answers[name] = fn()
        return run

    times = interleaved({"pyhessian": timed("pyhessian", lambda: pyhessian(py_tol, py_probes)),
                         "prealign": timed("prealign", lambda: prealign(pa_tol, with_trace=True))},
                        reps, device, warmup=0)
    failures = {side: hessian_answer_failures(answers[side], ref, eig_rtol=eig_rtol, trace_rse=trace_rse)
                for side in answers}
    row = _row("hessian/mlp", f"{title} (top eigenvalue to {eig_rtol:g} relative, trace to {trace_rse:.0%} standard "
               f"error; 64-{hidden}-10 on digits)", ">= 2", times["pyhessian"], times["prealign"])
    if any(failures.values()):
        row.passed = False
    row.details = {
        "model": f"mlp 64-{hidden}-10 (bp), digits, {n} samples, float32", "n_params": sum(p.numel() for p in model.parameters()),
        "reference": {**ref, "smallest_eig": float(spectrum[0]), "how": "exact float64 Hessian by autograd, eigvalsh",
                      "seconds": ref_seconds},
        "eig_rtol": eig_rtol, "trace_rse": trace_rse,
        "pyhessian": {"method": "power iteration + Hutchinson (PyHessian 0.1)", "tol": py_tol, "probes": py_probes,
                      **answers["pyhessian"], "seconds": row.a_seconds},
        "prealign": {"method": f"lanczos_top_eigen + deflated_trace ({deflate} Lanczos vectors, batches of 32 probes)",
                     "rtol": pa_tol, **answers["prealign"], "seconds": row.b_seconds},
        "accuracy_failures": failures,
        "note": "each side's tolerance is the loosest of the ladder that gives the eigenvalue to eig_rtol (checked "
                "untimed, then the timed answers are checked again); PyHessian's probe count comes from a 100-probe "
                "pilot's variance (+20 %), prealign stops on its running standard error",
    }
    return row


# -- row 5: sweep throughput ------------------------------------------------------------------------
_SWEEP_DATA: dict = {}


def sweep_run(spec: dict) -> float:
    """One small sweep run (a worker task): 784-100-10 FA on a subset of mnist5k; returns best test accuracy."""
    from .. import mlp
    from ..run.trainer import train

    key = spec["n_train"]
    if key not in _SWEEP_DATA:
        _SWEEP_DATA[key] = _load("mnist5k", spec["n_train"])
    model = mlp(SMALL_DIMS, "fa", generator=_gen(spec["seed"]))
    return train(model, _SWEEP_DATA[key], epochs=spec["epochs"], batch_size=64, lr=1e-3, seed=spec["seed"],
                 device="cpu", progress=False).best_test_acc


def sweep_group(specs: list[dict]) -> list[float]:
    """A worker task training several :func:`sweep_run` runs as one batched model
    (:func:`prealign.run.batched.train_runs`: what ``run_sweep(batch_models="auto")`` does with such runs)."""
    from .. import mlp
    from ..run.batched import train_runs

    key = specs[0]["n_train"]
    if key not in _SWEEP_DATA:
        _SWEEP_DATA[key] = _load("mnist5k", key)
    models = [mlp(SMALL_DIMS, "fa", generator=_gen(spec["seed"])) for spec in specs]
    results = train_runs(models, _SWEEP_DATA[key], epochs=specs[0]["epochs"], seeds=[spec["seed"] for spec in specs],
                         batch_size=64, lr=1e-3, device="cpu", progress=False)
    return [r.best_test_acc for r in results]


def _warm(spec: dict) -> int:
    sweep_run({**spec, "epochs": 0})
    return os.getpid()


def _bench_worker_init(parent_pid: int) -> None:
    """A bench worker is a sweep worker: one torch thread, and it exits when the bench process dies."""
    from ..run.sweep import _limit_threads, _worker_init

    _worker_init(parent_pid)
    _limit_threads()


def bench_sweep(quick: bool, workers: int | None = None) -> list[BenchRow]:
    """N spawned single-threaded workers (a warm pool, as a long sweep has) vs the same runs serially in
    this process with all cores; one repetition = the whole sweep. Two rows: workers training one run
    per task, and workers training their share of the runs as one batched model."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    workers = workers or os.cpu_count() or 1
    runs, n_train, epochs = (4, 300, 1) if quick else (8, 1000, 2)
    specs = [{"seed": s, "n_train": n_train, "epochs": epochs} for s in range(runs)]
    threads = torch.get_num_threads()
    start = time.perf_counter()
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"),
                               initializer=_bench_worker_init, initargs=(os.getpid(),))
    try:
        list(pool.map(_warm, [specs[0]] * workers))
        startup = time.perf_counter() - start

        def parallel():
            list(pool.map(sweep_run, specs))

        def parallel_batched():  # each worker trains its share of the runs as one batched model
            list(pool.map(sweep_group, [specs[w::workers] for w in range(workers)]))

        def serial():
            torch.set_num_threads(os.cpu_count() or 1)
            try:
                for spec in specs:
                    sweep_run(spec)
            finally:
                torch.set_num_threads(threads)

        times = interleaved({"serial": serial, "parallel": parallel, "parallel_batched": parallel_batched},
                            1 if quick else 4, torch.device("cpu"), warmup=1)
    finally:
        pool.shutdown()
    details = {"workers": workers, "runs": runs, "n_train": n_train, "epochs": epochs, "model": "784-100-10 fa",
               "pool_startup_s": startup, "note": "warm pool (started once per sweep; its start-up is reported, not timed)"}
    row = _row("sweep/processes", f"sweep throughput, {workers} single-threaded workers / 1 process on all cores",
               ">= 1.7", times["serial"], times["parallel"], details=dict(details))
    row.details.update(serial_s=row.a_seconds, parallel_s=row.b_seconds)
    grouped = _row("sweep/processes-batched", f"sweep throughput, {workers} single-threaded workers training their "
                   "runs batched / 1 process on all cores", ">= 1.7", times["serial"], times["parallel_batched"],
                   details=dict(details))
    grouped.details.update(serial_s=grouped.a_seconds, parallel_s=grouped.b_seconds,
                           groups=f"{workers} groups of {runs // workers} (prealign.run.batched.train_runs)")
    return [row, grouped]


def sweep_batching_timings(quick: bool = True, workers: int = 1, repeats: int | None = None) -> dict:
    """Wall time of one sweep of small runs with batching off vs on (``batch_models=False`` vs
    ``"auto"``), same ``workers``, one torch thread per worker (the sweep's own setting).

    Runs: 784-100-10 on the first 1,000 (quick) or 4,000 mnist5k training images, methods bp, fa,
    ifa × seeds (12 runs quick, 24 full), 2 (quick) or 3 epochs, batch 64, Adam lr 1e-4, gradient
    alignment on (the default); every run stored with its checkpoints as a real sweep does. The
    two sweeps alternate ``repeats`` times (default 1 quick, 3 full), each into a fresh store.
    Returns ``{"off_s": [seconds per repetition], "on_s": [...], "ratio": median of the paired
    off/on ratios, "runs", "workers", "n_train", "epochs", "model"}``.
    """
    import tempfile

    from ..run.config import RunConfig
    from ..run.store import Store
    from ..run.sweep import run_sweep

    n_train, epochs, seeds = (1000, 2, 4) if quick else (4000, 3, 8)
    repeats = repeats or (1 if quick else 3)
    configs = [RunConfig(method=m, seed=s, dataset="mnist5k", train_subset=n_train, hidden=(100,), epochs=epochs,
                         batch_size=64, lr=1e-4, device="cpu") for m in ("bp", "fa", "ifa") for s in range(seeds)]
    times: dict[str, list[float]] = {"off": [], "on": []}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # workers=1 trains in this process: one thread, as every worker has
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for label, batch in (("off", False), ("on", "auto")):  # warm-up: data cached, both code paths run once
                run_sweep(configs[:2], Store(f"{tmp}/warm-{label}"), workers=1, progress=False, batch_models=batch)
            for rep in range(repeats):
                for label, batch in (("off", False), ("on", "auto")):
                    store = Store(f"{tmp}/{label}{rep}")
                    t = time.perf_counter()
                    out = run_sweep(configs, store, workers=workers, progress=False, batch_models=batch)
                    times[label].append(time.perf_counter() - t)
                    store.close()
                    bad = [o.error for o in out if o.status != "finished"]
                    if bad:
                        raise RuntimeError(f"bench sweep ({label}) had failed runs: {bad[:2]}")
    finally:
        torch.set_num_threads(threads)
    ratio = statistics.median(a / b for a, b in zip(times["off"], times["on"]))
    return {"off_s": times["off"], "on_s": times["on"], "ratio": ratio, "runs": len(configs), "workers": workers,
            "n_train": n_train, "epochs": epochs, "model": "784-100-10, bp/fa/ifa"}


def bench_sweep_store(quick: bool) -> BenchRow:
    """``run_sweep`` end to end (store, checkpoints, grouping) with batching off / ``"auto"``, 1 worker, 1 thread."""
    r = sweep_batching_timings(quick)
    row = _row("sweep/run_sweep-batching", f"{r['runs']}-run run_sweep, batch_models off / auto (1 worker, 1 thread)",
               ">= 1", r["off_s"], r["on_s"])
    row.details = {k: v for k, v in r.items() if k not in ("off_s", "on_s", "ratio")}
    row.details.update(off_s=row.a_seconds, on_s=row.b_seconds)
    return row


# -- row 6: vectorized multi-seed training (prealign.bench.groups) ----------------------------------------
def batched_models(s: int) -> list[nn.Module]:
    from .groups import batched_models as models

    return models(s)


def bench_batched(device: torch.device, quick: bool) -> list[BenchRow]:
    from .groups import bench_batched as rows

    return rows(device, quick)


# -- row 7: step time of the model zoo per rule / BP ----------------------------------------------------
ZOO = (("resnet20", "ResNet-20"), ("vit", "ViT"))


def bench_zoo(device: torch.device, quick: bool) -> list[BenchRow]:
    """FA and DFA vs BP on ResNet-20 and the ViT: same weights, same batch, same Adam (as row 1)."""
    from ..models import build_model

    batch = 8 if quick else 128
    reps, n = (3, 1) if quick else (9, 3)
    x = torch.rand(batch, 3, 32, 32, generator=_gen(1)).to(device)
    y = torch.randint(0, 10, (batch,), generator=_gen(2)).to(device)
    rows = []
    for key, label in ZOO:
        fns = {rule: _steps(build_model(key, (3, 32, 32), 10, rule=rule, generator=_gen(0)).to(device), x, y, n)
               for rule in ("bp", "fa", "dfa")}
        times = interleaved(fns, reps, device)
        for rule in ("fa", "dfa"):
            rows.append(_row(f"zoo/{key}/{rule}", f"{rule.upper()} / BP step time, {label}, batch {batch}", "<= 1.05",
                             times[rule], times["bp"], details={"steps_per_rep": n,
                                                                "ms_per_step": statistics.median(times[rule]) / n * 1e3,
                                                                "bp_ms_per_step": statistics.median(times["bp"]) / n * 1e3}))
    return rows


# -- the suite --------------------------------------------------------------------------------------------
ROWS = ("step", "recipe", "flops", "hessian", "sweep", "batched", "zoo")


def run_bench(quick: bool = False, device: str | torch.device = "auto", only=None, threads: int | None = None,
              log: Callable[[str], None] | None = None) -> dict:
    """Run the suite; returns ``{"machine": {...}, "quick": bool, "rows": [BenchRow.to_dict()], "seconds": float}``.

    ``only``: row names from :data:`ROWS`; ``threads``: torch intra-op threads for the run (default:
    torch's choice, one per core; 1 with ``quick`` on the CPU; the sweep row's single process always
    uses all cores).
    """
    dev = resolve_device(device)
    previous_threads = torch.get_num_threads()
    if threads is None and quick and dev.type == "cpu":
        threads = 1  # the CI smoke mode: small workloads, and steady under other processes' load
    if threads is not None:
        if threads < 1:
            raise ConfigError(f"--threads must be at least 1, got {threads}")
        torch.set_num_threads(threads)
    try:
        return _run(quick, dev, only, log)
    finally:
        torch.set_num_threads(previous_threads)


def _run(quick, dev, only, log) -> dict:
    only = tuple(only) if only else ROWS
    unknown = [name for name in only if name not in ROWS]
    if unknown:
        raise UnknownNameError("benchmark row", unknown[0], ROWS)
    start = time.perf_counter()
    rows: list[BenchRow] = []
    jobs = {
        "step": lambda: bench_step(dev, quick),
        "flops": lambda: [bench_flops(dev, quick)],
        "sweep": lambda: [*bench_sweep(quick), bench_sweep_store(quick)],
        "batched": lambda: bench_batched(dev, quick),
        "recipe": lambda: [bench_recipe(dev, quick)],
        "hessian": lambda: [bench_hessian(dev, quick)],
        "zoo": lambda: bench_zoo(dev, quick),
    }
    for name in ROWS:
        if name not in only:
            continue
        t = time.perf_counter()
        rows.extend(jobs[name]())
        if log:
            log(f"{name}: {time.perf_counter() - t:.1f} s")
    order = {name: i for i, name in enumerate(ROWS)}
    rows.sort(key=lambda r: order[r.key.split("/")[0]])
    return {"machine": machine_info(dev), "quick": quick, "rows": [r.to_dict() for r in rows],
            "seconds": time.perf_counter() - start}


def format_table(result: dict) -> str:
    """The rows as a Markdown table (ratio, spread, target, pass)."""
    lines = ["| row | ratio | spread (IQR of paired ratios) | target | ok |", "|---|---|---|---|---|"]
    for r in result["rows"]:
        if r["skipped"]:
            lines.append(f"| {r['title']} | skipped | {r['skipped']} | {r['target']} | – |")
            continue
        lo, hi = r["spread"]
        ok = "yes" if r["passed"] else "no"
        lines.append(f"| {r['title']} | {r['ratio']:.2f} | {lo:.2f}–{hi:.2f} | {r['target'].replace('<=', '≤').replace('>=', '≥')} | {ok} |")
    m = result["machine"]
    lines.append("")
    lines.append(f"{m['cpu']}, {m['cores']} cores, torch {m['torch']} ({m['torch_threads']} threads), device {m['device']}"
                 f"{', ' + m['gpu'] if 'gpu' in m else ''}; {'quick' if result['quick'] else 'full'} suite in {result['seconds']:.0f} s")
    return "\n".join(lines)
