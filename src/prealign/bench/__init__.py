"""The benchmark suite behind ``prealign bench``: ratios measured side by side in one run.

Every row compares two things, A and B, on this machine in this process: repetitions of A and B
are interleaved (A B B A A B ...), so drifts in machine load hit both; the row's ratio is the
median over repetitions of the paired ratio ``A_i / B_i`` (or its inverse, so that the target
says whether higher or lower is better), and the *spread* is the interquartile range of those
paired ratios. Rows:

1. ``step``     step time of every rule / BP (forward, cross-entropy, backward, Adam step) for the
                IFA paper's 784-512-512-10 MLP and the LeNet variant at batch 128. Target ≤ 1.05
                (brsf, wm: ≤ 1.10, :data:`.step.STEP_TARGETS`).
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
                the ceiling any bitwise engine can reach (:mod:`.batched`). Targets ≥ 2.0 (8) and
                ≥ 2.5 (16).
7. ``zoo``      FA / BP and DFA / BP step time (as row 1) of ResNet-20 and the small ViT
                (:mod:`prealign.models`) on CIFAR-shaped 3×32×32 batches of 128. Target ≤ 1.05.

``run_bench(quick=True)`` uses reduced sizes and repetitions (well under a minute). Every row uses
only the embedded data sets (MNIST-5k), so the suite runs on a fresh machine.

One module per row family; this package only re-exports them. A new row family is a
``bench_NAME`` function in its own module and one entry in :data:`ROWS` (:mod:`.suite`); a new
row of a family, a few lines in that family's function. Then a line above.

- :mod:`.base` — :class:`BenchRow`, interleaved timing, the paired-ratio row, shared models/steps/data
- :mod:`.step` — rows 1 and 7 (``step``, ``zoo``); :mod:`.recipe` — row 2; :mod:`.flops` — row 3;
  :mod:`.hessian` — row 4; :mod:`.sweep` — row 5; :mod:`.batched` — row 6
- :mod:`.suite` — :data:`ROWS`, :func:`run_bench`, :func:`format_table`
"""
from __future__ import annotations

from .base import MLP_DIMS, SMALL_DIMS, BenchRow, interleaved, machine_info, mlp_flops_per_step
from .batched import batched_models, bench_batched
from .flops import bench_flops
from .hessian import EIG_RTOL, TOL_LADDER, bench_hessian, exact_hessian, hessian_answer_failures, loosest_accurate
from .recipe import BioTorchFAFunction, BioTorchFALinear, TorchvisionStyleDataset, bench_recipe, usual_recipe_model
from .step import ZOO, bench_step, bench_zoo
from .suite import ROWS, format_table, run_bench
from .sweep import bench_sweep, bench_sweep_store, sweep_batching_timings, sweep_group, sweep_run

__all__ = ["BenchRow", "MLP_DIMS", "SMALL_DIMS", "interleaved", "machine_info", "mlp_flops_per_step",
           "bench_step", "bench_zoo", "ZOO", "bench_recipe", "usual_recipe_model", "TorchvisionStyleDataset",
           "BioTorchFAFunction", "BioTorchFALinear", "bench_flops", "bench_hessian", "exact_hessian",
           "hessian_answer_failures", "loosest_accurate", "EIG_RTOL", "TOL_LADDER", "bench_sweep",
           "bench_sweep_store", "sweep_batching_timings", "sweep_run", "sweep_group", "bench_batched",
           "batched_models", "ROWS", "run_bench", "format_table"]
