"""How the error travels backward: learning rules as drop-in layers (SPEC §1)."""
from .convert import (CONVERTIBLE, CONVERTIBLE_TYPES, LOCAL_GRADIENT_MODULES, convert, exact_gradients, feedback_layers,
                      plain_state_dict, rule_of, unconvert, unconverted_layers)
from .kp import set_kp_decay
from .learned import FeedbackNotUpdatedWarning
from .layers import (KP_DECAY, AttentionProjection, FeedbackBilinear, FeedbackConv1d, FeedbackConv2d, FeedbackConv3d,
                     FeedbackConvTranspose1d, FeedbackConvTranspose2d, FeedbackConvTranspose3d, FeedbackLayer,
                     FeedbackLinear, FeedbackMultiheadAttention, FeedbackOutProjection)
from .rng import rules_rng_state, seed_rules, set_rules_rng_state
from .rules import RULES, Rule, get_rule, register_rule
from .step import feedback_step
from .summary import Summary, summary
from .wm import set_wm

__all__ = ["FeedbackLinear", "FeedbackBilinear", "FeedbackConv1d", "FeedbackConv2d", "FeedbackConv3d",
           "FeedbackConvTranspose1d", "FeedbackConvTranspose2d", "FeedbackConvTranspose3d", "FeedbackMultiheadAttention",
           "AttentionProjection", "FeedbackOutProjection", "FeedbackLayer", "CONVERTIBLE", "CONVERTIBLE_TYPES", "convert",
           "unconvert", "plain_state_dict", "summary", "Summary", "exact_gradients",
           "feedback_layers", "rule_of", "unconverted_layers", "LOCAL_GRADIENT_MODULES", "set_kp_decay", "KP_DECAY", "set_wm",
           "RULES", "Rule", "get_rule", "register_rule", "seed_rules", "rules_rng_state", "set_rules_rng_state",
           "feedback_step", "FeedbackNotUpdatedWarning"]
