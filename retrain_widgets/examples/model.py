"""The small digits CNN and its shipped, project-trained weights."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

__all__ = ["NUM_CLASSES", "WEIGHTS_PATH", "DigitsCNN", "pretrained_digits_cnn"]

#: Number of classes of the original task (the digits 0..9).
NUM_CLASSES = 10

#: The shipped weights, rebuilt by ``python -m retrain_widgets.examples.build_weights``.
WEIGHTS_PATH: Path = Path(__file__).resolve().with_name("digits_cnn.pt")


class DigitsCNN(nn.Module):
    """A tiny CNN for 8x8 grey-scale digits (about 28k parameters).

    The network is split into a ``features`` body and a ``classifier`` head, both
    :class:`torch.nn.Sequential`, so that a retraining run can freeze the body, swap the
    head's last layer (``classifier[-1]``) or give the two parts different learning rates.
    The body contains BatchNorm layers on purpose: their running statistics are part of
    what a careless retraining run can silently change.

    Parameters
    ----------
    num_classes
        Outputs of the last linear layer (10 for the original task).
    dropout
        Dropout probability in the head.

    Notes
    -----
    Input: float tensor of shape ``(N, 1, 8, 8)`` with values in ``[0, 1]`` (the raw
    ``load_digits`` pixel values divided by 16). Output: logits of shape ``(N, num_classes)``.
    """

    def __init__(self, num_classes: int = NUM_CLASSES, dropout: float = 0.1) -> None:
        super().__init__()
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
        if not 0.0 <= float(dropout) < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, kernel_size=3, padding=1),
            nn.BatchNorm2d(16),
            nn.ReLU(inplace=True),
            nn.Conv2d(16, 32, kernel_size=3, padding=1),
            nn.BatchNorm2d(32),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Conv2d(32, 64, kernel_size=3, padding=1),
            nn.BatchNorm2d(64),
            nn.ReLU(inplace=True),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.classifier = nn.Sequential(
            nn.Linear(64, 64),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(64, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return logits of shape ``(N, num_classes)`` for ``x`` of shape ``(N, 1, 8, 8)``."""
        return self.classifier(self.features(x))


def pretrained_digits_cnn() -> DigitsCNN:
    """Return a new :class:`DigitsCNN` with the shipped weights loaded, in ``eval()`` mode.

    The weights were trained by this project on the training split of
    :func:`~retrain_widgets.examples.digits_arrays` (see
    :mod:`retrain_widgets.examples.build_weights`); they are loaded with
    ``torch.load(..., weights_only=True)`` and need no network access.

    Returns
    -------
    DigitsCNN
        A fresh instance each call, on the CPU, in evaluation mode.

    Raises
    ------
    FileNotFoundError
        If the weights file is missing from the installation.
    """
    if not WEIGHTS_PATH.is_file():
        raise FileNotFoundError(
            f"the example weights {WEIGHTS_PATH} are missing; rebuild them with "
            "`python -m retrain_widgets.examples.build_weights`"
        )
    state = torch.load(WEIGHTS_PATH, map_location="cpu", weights_only=True)
    model = DigitsCNN()
    model.load_state_dict(state)
    return model.eval()
