"""A bundled, offline example: a small CNN pretrained by this project on scikit-learn's digits.

Nothing here downloads anything: the images ship with scikit-learn and the weights
(``digits_cnn.pt``, rebuilt by ``python -m retrain_widgets.examples.build_weights``) ship
with this package.

- :func:`pretrained_digits_cnn` -- a :class:`DigitsCNN` trained on the original 10-class task.
- :func:`digits_arrays`, :func:`digits_loaders` -- the fixed stratified 80/20 split.
- :func:`task` / :func:`tasks` -- new tasks on the same images that call for a different
  loss (``"is_seven"``, ``"digit_value"``, ``"loops"``), each with an ``old_val`` loader on
  the original labels to measure forgetting and a suggested ``config``; 30 % of their training
  images are mislabelled (:func:`noisy_train_digits`), so that the choices make a difference.
- :func:`code` -- the source of ``load_pretrained_model()`` and ``make_loaders()`` for an
  exported training script (:func:`retrain_widgets.core.export.export_script`).
- :func:`resnet18_shaped` -- a randomly initialised ResNet-18 with torchvision's module names
  (no torchvision needed), for "bring your own model" examples and benchmarks.

Examples
--------
>>> from retrain_widgets.examples import pretrained_digits_cnn, task
>>> model = pretrained_digits_cnn()
>>> t = task("is_seven")
>>> t.losses[0], t.head_out, t.kind
('focal', 1, 'binary')
>>> t.config.loss, t.config.head_out
('bce', 1)
"""

from __future__ import annotations

from .data import (
    LOOPS_OF_DIGIT,
    NOISE_SEED,
    TRAIN_LABEL_NOISE,
    Task,
    code,
    digits_arrays,
    digits_loaders,
    noisy_train_digits,
    task,
    tasks,
)
from .model import NUM_CLASSES, WEIGHTS_PATH, DigitsCNN, pretrained_digits_cnn
from .resnet import BasicBlock, ResNet, resnet18_shaped

__all__ = [
    "BasicBlock",
    "LOOPS_OF_DIGIT",
    "NOISE_SEED",
    "NUM_CLASSES",
    "TRAIN_LABEL_NOISE",
    "WEIGHTS_PATH",
    "DigitsCNN",
    "ResNet",
    "Task",
    "code",
    "digits_arrays",
    "digits_loaders",
    "noisy_train_digits",
    "pretrained_digits_cnn",
    "resnet18_shaped",
    "task",
    "tasks",
]
