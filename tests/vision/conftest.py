"""tests/vision/: torchvision and timm classes as users bring them, with random weights (no download).

They run in ``.venv-vision``, where torchvision and timm sit beside the torch they were built for:
``./dev test`` makes that venv and runs this folder there (the main venv's CPU torch has no
torchvision). Both are imported here, at collection: a missing one is an error, never a skip."""

from __future__ import annotations

import sys
from pathlib import Path

import timm  # noqa: F401 - imported for the failure it gives when missing
import torch
import torchvision  # noqa: F401

sys.path.insert(0, str(Path(__file__).resolve().parent))  # vision_zoo
torch.set_num_threads(1)
