"""How the error travels backward: learning rules as drop-in layers (SPEC §1)."""
from .convert import CONVERTIBLE, LOCAL_GRADIENT_MODULES, convert, exact_gradients, feedback_layers, rule_of, unconverted_layers
from .kp import set_kp_decay
from .layers import KP_DECAY, FeedbackConv1d, FeedbackConv2d, FeedbackConv3d, FeedbackLayer, FeedbackLinear
from .rules import RULES, Rule, get_rule, register_rule
from .wm import set_wm

__all__ = ["FeedbackLinear", "FeedbackConv1d", "FeedbackConv2d", "FeedbackConv3d", "FeedbackLayer", "CONVERTIBLE", "convert", "exact_gradients",
           "feedback_layers", "rule_of", "unconverted_layers", "LOCAL_GRADIENT_MODULES", "set_kp_decay", "KP_DECAY", "set_wm",
           "RULES", "Rule", "get_rule", "register_rule"]
