"""The torchvision and timm models of the vision tests, small where a config allows it, and tiny
image data (32x32: every model here runs on it)."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

IMAGE = 32
N_LABELS = 3

#: name -> (the code that builds it, as the exported script's model code uses it, its head)
MODELS: dict[str, tuple[str, str]] = {
    "resnet18": ("torchvision.models.resnet18(num_classes=10)", "fc"),
    "resnet50": ("torchvision.models.resnet50(num_classes=10)", "fc"),
    "mobilenet_v3_small": ("torchvision.models.mobilenet_v3_small(num_classes=10)", "classifier.3"),
    "efficientnet_b0": ("torchvision.models.efficientnet_b0(num_classes=10)", "classifier.1"),
    "convnext_tiny": ("torchvision.models.convnext_tiny(num_classes=10)", "classifier.2"),
    "swin_t": ("torchvision.models.swin_t(num_classes=10)", "head"),
    "regnet_x_400mf": ("torchvision.models.regnet_x_400mf(num_classes=10)", "fc"),
    "densenet121": ("torchvision.models.densenet121(num_classes=10)", "classifier"),
    "vit": ("torchvision.models.VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=2, "
            "hidden_dim=32, mlp_dim=64, num_classes=10)", "heads.head"),
    "timm_vit": ("timm.create_model('vit_tiny_patch16_224', pretrained=False, num_classes=10, img_size=32, "
                 "patch_size=8, depth=2)", "head"),
    "timm_deit": ("timm.create_model('deit_tiny_patch16_224', pretrained=False, num_classes=10, img_size=32, "
                  "patch_size=8, depth=2)", "head"),
    "timm_convnext_atto": ("timm.create_model('convnext_atto', pretrained=False, num_classes=10)", "head.fc"),
    "timm_resnet18": ("timm.create_model('resnet18', pretrained=False, num_classes=10)", "fc"),
    "timm_efficientnet_b0": ("timm.create_model('efficientnet_b0', pretrained=False, num_classes=10)", "classifier"),
}
ALL = list(MODELS)

#: Parameters held next to a module's children (position embeddings, class tokens): the input side.
HELD = {"vit": ["class_token", "encoder.pos_embedding"], "timm_vit": ["cls_token", "pos_embed"],
        "timm_deit": ["cls_token", "pos_embed"]}


def model_code(name: str) -> str:
    """``load_pretrained_model()`` for the exported script (and for the tests: the same model)."""
    return (f"import timm\nimport torch\nimport torchvision\n\n\ndef load_pretrained_model():\n"
            f"    torch.manual_seed(0)\n    return {MODELS[name][0]}\n")


def build(name: str) -> nn.Module:
    namespace: dict = {}
    exec(model_code(name), namespace)
    return namespace["load_pretrained_model"]()


def head(name: str) -> str:
    return MODELS[name][1]


#: make_loaders() for the exported script and the engine: random images, 3 labels.
DATA_CODE = """\
import torch
from torch.utils.data import DataLoader, TensorDataset


def make_loaders(batch_size_divisor=1):
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(16, 3, 32, 32, generator=g), torch.randint(0, 3, (16,), generator=g)
    train = DataLoader(TensorDataset(x[:8], y[:8]), batch_size=4 // batch_size_divisor, shuffle=True,
                       generator=torch.Generator().manual_seed(2))
    val = DataLoader(TensorDataset(x[8:], y[8:]), batch_size=4 // batch_size_divisor)
    return train, val, None
"""


def loaders() -> tuple[DataLoader, DataLoader, None]:
    namespace: dict = {}
    exec(DATA_CODE, namespace)
    return namespace["make_loaders"]()


def images(n: int = 8, seed: int = 0, batch_size: int = 4) -> DataLoader:
    g = torch.Generator().manual_seed(seed)
    x, y = torch.randn(n, 3, IMAGE, IMAGE, generator=g), torch.randint(0, N_LABELS, (n,), generator=g)
    return DataLoader(TensorDataset(x, y), batch_size=batch_size)

