"""Row 4, ``hessian``: PyHessian / :mod:`prealign.analysis.hessian`, time to the same answer,
both checked against the exact Hessian of a small MLP."""
from __future__ import annotations

import copy
import math
import time
import warnings
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from .base import BenchRow, _gen, _load, _row, interleaved


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
    prealign: :func:`~prealign.analysis.spectrum.lanczos_top_eigen` at the loosest ``rtol`` of the
    same ladder that meets it, and :func:`~prealign.analysis.spectrum.deflated_trace` (a Lanczos
    basis, then batched projected Rademacher probes until the standard error is met). Both sides'
    timed answers are checked again; a miss fails the row and is listed in ``details``.
    """
    title = "PyHessian / prealign time to equal accuracy"
    try:
        from pyhessian import hessian as PyHessian
    except ImportError:
        return BenchRow("hessian/mlp", title, None, ">= 2",
                        skipped="PyHessian is not installed (pip install --no-deps pyhessian; it needs only numpy and torch)")
    from ..models import mlp
    from ..analysis.hessian import hessian_operator
    from ..analysis.spectrum import deflated_trace, lanczos_top_eigen

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
