"""The retraining recipe in plain PyTorch: each piece written once.

The engine (:class:`~retrain_widgets.core.engine.Retrainer`) runs these functions, and
:func:`~retrain_widgets.core.export.export_script` writes their very source into the exported
script. So the modules here import nothing but torch (and each other): every function reads,
and runs, on its own.

* :mod:`.freezing` -- freezing with the BatchNorm lock, ``train_bn``, gradual unfreezing stages;
* :mod:`.losses` -- each built-in loss and the distillation loss;
* :mod:`.schedules` -- building each learning-rate schedule;
* :mod:`.training` -- parameter groups, the seed, one training step's pieces, the head swap, L2-SP;
* :mod:`.evaluation` -- the metrics, the old task, the evaluation loop.
"""

from __future__ import annotations

from . import evaluation, freezing, losses, schedules, training

__all__ = ["evaluation", "freezing", "losses", "schedules", "training"]
