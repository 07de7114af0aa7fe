"""prealign: training without weight transport, and why it works.

Learning rules as drop-in layers (:mod:`prealign.feedback`), initial conditions
(:mod:`prealign.init`), random-noise pretraining (:mod:`prealign.pretrain`), methods
(:mod:`prealign.methods`) and the papers' models (:mod:`prealign.models`).
"""
from .errors import ConfigError, PrealignError, UnknownNameError
from .feedback import (RULES, FeedbackConv2d, FeedbackLayer, FeedbackLinear, FeedbackNotUpdatedWarning, convert,
                       exact_gradients, feedback_layers, feedback_step, get_rule, rule_of, rules_rng_state, seed_rules,
                       set_kp_decay, set_rules_rng_state, set_wm)
from .feedback import plain_state_dict, summary, unconvert
from .init import align, alignment_angles, init_weights
from .methods import METHODS, Method, get_method, register_method
from .models import MODELS, alexnet, build_model, lenet, mlp
from .pretrain import pretrain_noise

__version__ = "0.1.0"

__all__ = [
    "FeedbackLinear", "FeedbackConv2d", "FeedbackLayer", "convert", "exact_gradients", "feedback_layers",
    "rule_of", "set_kp_decay", "set_wm", "seed_rules", "rules_rng_state", "set_rules_rng_state",
    "feedback_step", "FeedbackNotUpdatedWarning", "summary", "unconvert", "plain_state_dict", "RULES", "get_rule",
    "init_weights", "align", "alignment_angles", "pretrain_noise",
    "Method", "METHODS", "get_method", "register_method", "mlp", "lenet", "alexnet", "build_model", "MODELS",
    "PrealignError", "UnknownNameError", "ConfigError",
]


def __getattr__(name):  # the trainer and data layer load lazily: `import prealign` stays light
    if name in ("train", "TrainResult"):
        from .run import trainer
        return getattr(trainer, name)
    if name == "data":
        import importlib
        return importlib.import_module(".data", __name__)
    raise AttributeError(f"module 'prealign' has no attribute {name!r}")
