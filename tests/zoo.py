"""Models as users bring them, built small and offline: Hugging Face classes from tiny configs
(random init), and models shaped like timm's and torchvision's ViTs and CLIP, whose parameters
are partly held by the root or an encoder module."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

N_LABELS = 3
IMAGE = 16
VOCAB, SEQ = 40, 8

class Block(nn.Module):
    """A pre-norm transformer block with timm's names (norm1, attn.qkv, attn.proj, norm2, mlp)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = nn.Module()
        self.attn.qkv = nn.Linear(dim, 3 * dim)
        self.attn.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.attn.qkv(self.norm1(x)).chunk(3, dim=-1)
        a = torch.softmax(q @ k.transpose(1, 2) / q.shape[-1] ** 0.5, dim=-1) @ v
        x = x + self.attn.proj(a)
        return x + self.mlp(self.norm2(x))

class TimmLikeViT(nn.Module):
    """timm's VisionTransformer layout: ``cls_token`` and ``pos_embed`` held by the root, a
    ``patch_embed.proj`` conv, ``blocks``, ``norm``, ``head``, and timm's ``group_matcher()``
    and ``no_weight_decay()``."""

    def __init__(self, dim: int = 16, depth: int = 2, patch: int = 4, n_out: int = N_LABELS) -> None:
        super().__init__()
        n = (IMAGE // patch) ** 2
        self.cls_token = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
        self.pos_embed = nn.Parameter(torch.randn(1, n + 1, dim) * 0.02)
        self.patch_embed = nn.Module()
        self.patch_embed.proj = nn.Conv2d(3, dim, patch, stride=patch)
        self.blocks = nn.Sequential(*[Block(dim) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, n_out)

    def group_matcher(self, coarse: bool = False) -> dict:
        # timm's VisionTransformer.group_matcher
        return dict(stem=r"^cls_token|pos_embed|patch_embed",
                    blocks=[(r"^blocks\.(\d+)", None), (r"^norm", (99999,))])

    def no_weight_decay(self) -> set[str]:
        return {"pos_embed", "cls_token"}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed.proj(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        return self.head(self.norm(self.blocks(x))[:, 0])

class PlainViT(TimmLikeViT):
    """The same layout without a grouping of its own: our rule must place the root's
    parameters on the input side."""

    group_matcher = None  # type: ignore[assignment]
    no_weight_decay = None  # type: ignore[assignment]

class Encoder(nn.Module):
    """torchvision's ViT encoder: ``pos_embedding`` held next to a stack of ``layers``."""

    def __init__(self, dim: int, n: int) -> None:
        super().__init__()
        self.pos_embedding = nn.Parameter(torch.randn(1, n, dim) * 0.02)
        self.layers = nn.Sequential(Block(dim), Block(dim))
        self.ln = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ln(self.layers(x + self.pos_embedding))

class TorchvisionLikeViT(nn.Module):
    """torchvision's VisionTransformer layout: root ``class_token``, ``conv_proj``,
    ``encoder.pos_embedding``, ``heads.head``."""

    def __init__(self, dim: int = 16, patch: int = 4) -> None:
        super().__init__()
        self.class_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.conv_proj = nn.Conv2d(3, dim, patch, stride=patch)
        self.encoder = Encoder(dim, (IMAGE // patch) ** 2 + 1)
        self.heads = nn.Sequential()
        self.heads.head = nn.Linear(dim, N_LABELS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv_proj(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.class_token.expand(x.shape[0], -1, -1), x], dim=1)
        return self.heads(self.encoder(x)[:, 0])

class ClipLike(nn.Module):
    """CLIP's layout: ``logit_scale`` held by the root, registered after the towers."""

    def __init__(self) -> None:
        super().__init__()
        self.visual = nn.Sequential(nn.Flatten(), nn.Linear(3 * IMAGE * IMAGE, 16))
        self.text_projection = nn.Linear(16, 16)
        self.logit_scale = nn.Parameter(torch.tensor(2.659))
        self.head = nn.Linear(16, N_LABELS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.text_projection(self.visual(x)) * self.logit_scale.exp())

def _hf():
    import transformers

    transformers.logging.set_verbosity_error()
    return transformers

def hf_vision(kind: str) -> nn.Module:
    """A Hugging Face image classifier from a tiny config (random weights, no download)."""
    T = _hf()
    torch.manual_seed(0)
    configs = {
        "resnet": lambda: T.ResNetForImageClassification(T.ResNetConfig(
            embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="basic", num_labels=N_LABELS)),
        "convnext": lambda: T.ConvNextForImageClassification(T.ConvNextConfig(
            hidden_sizes=[8, 16], depths=[1, 1], num_stages=2, num_labels=N_LABELS)),
        "mobilenet_v2": lambda: T.MobileNetV2ForImageClassification(T.MobileNetV2Config(
            image_size=IMAGE, depth_multiplier=0.25, num_labels=N_LABELS)),
        "swin": lambda: T.SwinForImageClassification(T.SwinConfig(
            image_size=IMAGE, patch_size=2, embed_dim=8, depths=[1, 1], num_heads=[1, 2], window_size=4,
            num_labels=N_LABELS)),
        "vit": lambda: T.ViTForImageClassification(T.ViTConfig(
            image_size=IMAGE, patch_size=4, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
            intermediate_size=32, num_labels=N_LABELS)),
    }
    return configs[kind]()

def hf_text(kind: str) -> nn.Module:
    """A Hugging Face text model from a tiny config (random weights, no download)."""
    T = _hf()
    torch.manual_seed(0)
    small = dict(hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
                 max_position_embeddings=SEQ + 4, vocab_size=VOCAB, num_labels=N_LABELS)
    gpt2 = dict(n_embd=16, n_layer=2, n_head=2, n_positions=SEQ, vocab_size=VOCAB, bos_token_id=0, eos_token_id=0)
    configs = {
        "bert": lambda: T.BertForSequenceClassification(T.BertConfig(**small)),
        "distilbert": lambda: T.DistilBertForSequenceClassification(T.DistilBertConfig(
            dim=16, n_layers=2, n_heads=2, hidden_dim=32, max_position_embeddings=SEQ, vocab_size=VOCAB,
            num_labels=N_LABELS)),
        "roberta": lambda: T.RobertaForSequenceClassification(T.RobertaConfig(**small, pad_token_id=1)),
        "gpt2": lambda: T.GPT2ForSequenceClassification(T.GPT2Config(**gpt2, num_labels=N_LABELS, pad_token_id=0)),
        "gpt2_lm": lambda: T.GPT2LMHeadModel(T.GPT2Config(**gpt2)),
    }
    return configs[kind]()

VISION = ["resnet", "convnext", "mobilenet_v2", "swin", "vit"]
TEXT = ["bert", "distilbert", "roberta", "gpt2", "gpt2_lm"]
SHAPED = {"timm_like_vit": TimmLikeViT, "plain_vit": PlainViT, "torchvision_like_vit": TorchvisionLikeViT,
          "clip_like": ClipLike}
ALL = [*VISION, *TEXT, *SHAPED]

def build(kind: str) -> nn.Module:
    if kind in SHAPED:
        torch.manual_seed(0)
        return SHAPED[kind]()
    return hf_text(kind) if kind in TEXT else hf_vision(kind)

def is_text(kind: str) -> bool:
    return kind in TEXT

def loader(kind: str, n: int = 16, batch: int = 8, seed: int = 0) -> DataLoader:
    """Random inputs of the model's kind with 3-class labels."""
    g = torch.Generator().manual_seed(seed)
    if is_text(kind):
        x = torch.randint(2, VOCAB, (n, SEQ), generator=g)
    else:
        x = torch.randn(n, 3, IMAGE, IMAGE, generator=g)
    y = torch.randint(0, N_LABELS, (n,), generator=g)
    return DataLoader(TensorDataset(x, y), batch_size=batch)

def held_by_hand(kind: str) -> list[str]:
    """Names a user might freeze by parameter name, per model."""
    return {"timm_like_vit": ["cls_token", "pos_embed"], "plain_vit": ["cls_token", "pos_embed"],
            "torchvision_like_vit": ["class_token", "encoder.pos_embedding"], "clip_like": ["logit_scale"],
            "vit": ["vit.embeddings.cls_token"]}.get(kind, [])

