"""User-side model factories for tests/test_models_zoo.py, named by import path ("custom_nets:build").

pytest puts tests/ on sys.path, so ``custom_nets`` imports like a user's own package would.
"""
from torch import nn


def build(input_shape, num_classes):
    """A small CNN: conv 3×3 (4 filters) → BatchNorm → ReLU → Linear. Plain layers, as the factory contract asks."""
    c, h, w = input_shape
    return nn.Sequential(nn.Conv2d(c, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                         nn.Linear(4 * h * w, num_classes))


def wide(input_shape, num_classes, hidden=(16,), activation="relu"):
    """Takes both options: an MLP whose widths and activation come from the config."""
    from prealign.models.classic import mlp_factory

    return mlp_factory(input_shape, num_classes, hidden=hidden, activation=activation)


def recurrent(input_shape, num_classes):
    """An LSTM over image rows: a module no rule can convert (strict conversion must refuse it)."""
    return _RowLSTM(input_shape[-1], num_classes)


class _RowLSTM(nn.Module):
    def __init__(self, width, num_classes):
        super().__init__()
        self.lstm = nn.LSTM(width, 8, batch_first=True)
        self.fc = nn.Linear(8, num_classes)

    def forward(self, x):
        return self.fc(self.lstm(x.flatten(1, 2))[0][:, -1])


def not_a_module(input_shape, num_classes):
    return {"layers": 2}


NOT_CALLABLE = 3
