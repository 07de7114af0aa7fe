"""Models: a registry of factories (names or ``"package.module:function"`` import paths) and the
built-in networks (SPEC §6; docs/models.md).

- :mod:`~prealign.models.registry`: :func:`register_model`, :func:`build_model`, the factory contract;
- :mod:`~prealign.models.classic`: the IFA papers' ``mlp``, ``lenet`` and ``alexnet``;
- :mod:`~prealign.models.resnet`: CIFAR ResNet-20 and ResNet-56 (He et al. 2016, option-A shortcuts);
- :mod:`~prealign.models.vit`: a small pre-norm Vision Transformer.

Every builder returns an ``nn.Module`` with ``input_shape`` (C, H, W) and ``num_classes``
attributes, layers initialised by :func:`prealign.init_weights` (He, α = 2) from ``generator``,
and every Linear/Conv under ``rule``.
"""
from .classic import alexnet, lenet, mlp
from .registry import ACTIVATIONS, MODELS, build_model, finish, model_options, register_model, resolve_model
from .resnet import resnet20, resnet56
from .vit import ViT, vit

__all__ = ["ACTIVATIONS", "MODELS", "ViT", "alexnet", "build_model", "finish", "lenet", "mlp", "model_options",
           "register_model", "resnet20", "resnet56", "resolve_model", "vit"]
