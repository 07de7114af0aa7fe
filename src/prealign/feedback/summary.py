"""``summary(model)``: which rule every weight of a model learns by, as rows and as a plain-text table."""
from __future__ import annotations

from torch import nn

from .convert import LOCAL_GRADIENT_MODULES, feedback_layers
from .layers import FeedbackLayer, FeedbackMultiheadAttention
from .rules import RULES

NOT_CONVERTED = "backprop: not converted"
LOCAL = "local gradient"
COLUMNS = ("name", "type", "rule", "weight_shape", "angle_deg")


class Summary(list):
    """A list of JSON-able rows (dicts with :data:`COLUMNS`); ``str()`` is a plain-text table."""

    def __str__(self) -> str:
        head = ("name", "type", "rule", "weight shape", "∠(W,B) °")
        body = [(r["name"], r["type"], r["rule"], "×".join(map(str, r["weight_shape"])) if r["weight_shape"] else "—",
                 "—" if r["angle_deg"] is None else f"{r['angle_deg']:.1f}") for r in self]
        widths = [max(len(row[i]) for row in [head, *body]) for i in range(len(head))]
        lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in [head, *body]]
        lines.insert(1, "  ".join("-" * w for w in widths))
        return "\n".join(lines)


def _type_name(m: nn.Module) -> str:
    plain = getattr(type(m), "_plain", None)
    if isinstance(m, FeedbackLayer) and plain is None:  # an attention projection: name the weight it stands for
        return f"{type(m).__name__}[{m.weight_name}]"
    return type(m).__name__


def summary(model: nn.Module) -> Summary:
    """One row per module that owns parameters, and per feedback layer (attention projections own
    none: their weight is their attention module's), in ``named_modules`` order:

    - ``name``: qualified module name (``"<root>"`` for the model itself);
    - ``type``: class name;
    - ``rule``: the feedback layer's rule; ``"local gradient"`` for norms, embeddings, PReLU (their
      gradient is local already, :data:`~prealign.feedback.convert.LOCAL_GRADIENT_MODULES`);
      ``"backprop: not converted"`` for any other module with weights (LSTM, custom parameters, …);
      an attention module's own row lists only its biases (``"local gradient"``);
    - ``weight_shape``: shape of ``weight`` (of the projection weight for attention), else ``None``;
    - ``angle_deg``: row-mean ∠(W, B) in degrees (:func:`prealign.alignment_angles`) where the
      layer's rule reads ``B`` (``Rule.reads_feedback``: fa, kp, …), else ``None`` (printed "—").
    """
    from .angles import alignment_angles

    angles = alignment_angles(model) if feedback_layers(model) else {}
    rows = Summary()
    for name, m in model.named_modules():
        own = [p for _, p in m.named_parameters(recurse=False)]
        if not own and not isinstance(m, FeedbackLayer):
            continue
        if isinstance(m, FeedbackLayer):
            rule = m.rule if m.rule in RULES else f"{m.rule} (unknown)"
        elif isinstance(m, (FeedbackMultiheadAttention, *LOCAL_GRADIENT_MODULES)):
            rule = LOCAL
        else:
            rule = NOT_CONVERTED
        weight = getattr(m, "weight", None) if not isinstance(m, FeedbackMultiheadAttention) else None
        rows.append({"name": name or "<root>", "type": _type_name(m), "rule": rule,
                     "weight_shape": list(weight.shape) if weight is not None else None,
                     "angle_deg": angles.get(name)})
    return rows
