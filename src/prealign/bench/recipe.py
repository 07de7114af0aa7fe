"""Row 2, ``recipe``: the usual PyTorch recipe (map-style Dataset, shuffling DataLoader,
BioTorch-style ``autograd.Function`` FA layers) / :func:`prealign.train`, epoch time."""
from __future__ import annotations

import copy

import torch
from torch import nn

from .base import MNIST_MEAN, MNIST_STD, SMALL_DIMS, BenchRow, _adam_step, _gen, _load, _row, interleaved


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
    from ..models import mlp
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
