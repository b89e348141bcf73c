"""Image datasets as users build them: a folder of PNG files read by torchvision's ImageFolder.
A deterministic pipeline (Resize, CenterCrop, ToTensor, Normalize) gets the feature cache with
the uncached run's numbers; random augmentation is refused, and the reason names it."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader
from torchvision import datasets
from torchvision import transforms as T
from torchvision.transforms import v2
from vision_zoo import build, head

from retrain_widgets import Retrainer, RunConfig
from retrain_widgets.core import feature_cache as fc
from retrain_widgets.core.tree import frozen_complement

MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]  # ImageNet's, as users normalise for pretrained models
PIPELINES = {
    "v1": lambda: T.Compose([T.Resize(40), T.CenterCrop(32), T.ToTensor(), T.Normalize(MEAN, STD)]),
    "v2": lambda: v2.Compose([v2.ToImage(), v2.Resize(40), v2.CenterCrop(32), v2.ToDtype(torch.float32, scale=True),
                              v2.Normalize(MEAN, STD)]),
}


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """train/ and val/, each with a folder per class of 48x48 RGB PNG files."""
    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for split, n in (("train", 8), ("val", 4)):
        for label in ("cat", "dog"):
            (root / split / label).mkdir(parents=True)
            for i in range(n):
                pixels = rng.integers(0, 256, (48, 48, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(root / split / label / f"{i}.png")
    return root


def _loaders(folder, transform):
    train = datasets.ImageFolder(str(folder / "train"), transform=transform())
    val = datasets.ImageFolder(str(folder / "val"), transform=transform())
    return (DataLoader(train, batch_size=4, shuffle=True, generator=torch.Generator().manual_seed(0)),
            DataLoader(val, batch_size=4))


def _head_only(**changes) -> RunConfig:
    return RunConfig(frozen=frozen_complement(build("resnet18"), [head("resnet18")]), head_out=2, epochs=2, lr=1e-2,
                     device="cpu").replace(**changes)


@pytest.mark.parametrize("version", list(PIPELINES))
def test_deterministic_pipeline_is_cached_with_the_same_numbers(folder, version):
    fc.clear()
    runs = {mode: Retrainer(build("resnet18"), _head_only(cache_features=mode),
                            *_loaders(folder, PIPELINES[version])).fit() for mode in (False, "auto")}
    fc.clear()
    info = runs["auto"].meta["feature_cache"]
    assert info["state"] == "built", info
    assert info["loaders"]["val"]["state"] == "built" and info["trainable_part"] == ["fc"]
    for series in ("train_loss", "val_loss", "val_metric"):
        np.testing.assert_allclose(runs["auto"].series(series)[1], runs[False].series(series)[1], rtol=1e-5,
                                   atol=1e-6, err_msg=series)


def test_random_augmentation_is_refused_with_its_name(folder):
    def augmented():
        return T.Compose([T.RandomResizedCrop(32), T.RandomHorizontalFlip(), T.ToTensor(), T.Normalize(MEAN, STD)])

    fc.clear()
    history = Retrainer(build("resnet18"), _head_only(epochs=1), *_loaders(folder, augmented)).fit()
    info = history.meta["feature_cache"]
    assert info["state"] == "refused", info
    assert "RandomResizedCrop, RandomHorizontalFlip" in info["reason"] and "augment" in info["reason"]
    assert info["loaders"]["val"]["state"] == "refused"  # the same pipeline: refused there too
    fc.clear()
