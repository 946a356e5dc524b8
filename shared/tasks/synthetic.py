"""A GPU-sized built-in task with no download: class-conditional images and a ResNet (or, for the large
checkpoint configs, a transformer stack).

Each class has a smooth random template; an example is its class's template, shifted by a few pixels and
buried in Gaussian noise, so a model has real work to do and the validation metrics move for a while.
The data is generated once, on the CPU with a seeded generator, so any evaluator on any device rebuilds
exactly the same examples; `data.on_device` then keeps it in GPU memory, so no input pipeline can be
the bottleneck.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field
from torch import nn
from torch.nn import functional as F
from torch.utils.data import TensorDataset

from shared import config
from shared.tasks import ClassificationTask

IMAGE = 32
SHIFT = 4  # examples are shifted by up to this many pixels each way


class SyntheticModel(config.Section):
    arch: Literal["resnet", "transformer"] = Field("resnet", description="a ResNet, or a ViT-like transformer")
    width: config.PositiveCount = Field(64, description="resnet: channels of the first stage")
    blocks_per_stage: list[config.Count] = Field(
        default_factory=lambda: [2, 2, 2, 2], description="resnet: residual blocks per stage; [2, 2, 2, 2] is ResNet-18"
    )
    dim: int = Field(
        512, ge=64, le=config.MAX_COUNT, multiple_of=64, description="transformer: model width, 64 per head"
    )
    layers: config.PositiveCount = Field(8, description="transformer: blocks")


class SyntheticData(config.DataConfig):
    # A classifier's confusion matrix holds classes x classes counts: 10,000 classes is 800 MB of them (2**31,
    # the bound of other counts, made loading the config itself build two billion class names).
    classes: int = Field(10, ge=2, le=10_000, description="classes, one image template each")
    train_examples: config.PositiveCount = Field(50_000, description="images generated for training")
    eval_examples: config.PositiveCount = Field(10_000, description="images generated for evaluation")
    noise: config.NonNegative = Field(6.0, description="standard deviation of the Gaussian noise added to each image")
    data_seed: config.Seed = Field(0, description="seeds the templates and the noise")


def make_images(classes: int, examples: int, noise: float, seed: int, split: int) -> TensorDataset:
    """`examples` images of 3x32x32, balanced over classes, from the templates of `seed`."""
    templates_rng = torch.Generator().manual_seed(seed)
    coarse = torch.randn(classes, 3, 4, 4, generator=templates_rng)
    templates = F.interpolate(coarse, size=IMAGE + 2 * SHIFT, mode="bilinear", align_corners=False)
    rng = torch.Generator().manual_seed(seed * 1000 + 1 + split)
    labels = torch.arange(examples) % classes
    labels = labels[torch.randperm(examples, generator=rng)]
    dx, dy = (torch.randint(0, 2 * SHIFT + 1, (examples,), generator=rng) for _ in range(2))
    rows = (dy[:, None] + torch.arange(IMAGE))[:, None, :, None].expand(-1, 3, -1, IMAGE + 2 * SHIFT)
    crops = templates[labels].gather(2, rows)
    cols = (dx[:, None] + torch.arange(IMAGE))[:, None, None, :].expand(-1, 3, IMAGE, -1)
    images = crops.gather(3, cols) + noise * torch.randn(examples, 3, IMAGE, IMAGE, generator=rng)
    return TensorDataset(images, labels)


class BasicBlock(nn.Module):
    def __init__(self, inputs: int, outputs: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inputs, outputs, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(outputs)
        self.conv2 = nn.Conv2d(outputs, outputs, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(outputs)
        self.shortcut = nn.Sequential()
        if stride != 1 or inputs != outputs:
            self.shortcut = nn.Sequential(nn.Conv2d(inputs, outputs, 1, stride, bias=False), nn.BatchNorm2d(outputs))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


def resnet(width: int, blocks_per_stage: list[int], classes: int) -> nn.Module:
    """The CIFAR-style ResNet (ResNet-18 with width 64 and [2, 2, 2, 2]: 11.2M parameters)."""
    layers: list[nn.Module] = [nn.Conv2d(3, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU()]
    channels = width
    for stage, blocks in enumerate(blocks_per_stage):
        out = width * 2**stage
        for block in range(blocks):
            layers.append(BasicBlock(channels, out, stride=2 if stage > 0 and block == 0 else 1))
            channels = out
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, classes)]
    return nn.Sequential(*layers)


class PatchTransformer(nn.Module):
    """4x4 patches, pre-norm transformer blocks, mean pooling: sized by dim and layers for checkpoint tests."""

    def __init__(self, dim: int, layers: int, classes: int) -> None:
        super().__init__()
        self.patches = nn.Conv2d(3, dim, 4, 4)
        self.position = nn.Parameter(torch.zeros(1, (IMAGE // 4) ** 2, dim))
        block = nn.TransformerEncoderLayer(dim, dim // 64, 4 * dim, dropout=0.0, batch_first=True, norm_first=True)
        self.blocks = nn.TransformerEncoder(block, layers, enable_nested_tensor=False)
        self.head = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.patches(x).flatten(2).transpose(1, 2) + self.position
        return self.head(self.blocks(tokens).mean(dim=1))


class SyntheticTask(ClassificationTask):
    ModelConfig = SyntheticModel
    DataConfig = SyntheticData

    @property
    def class_names(self) -> list[str]:
        return [f"class {i}" for i in range(self.data_config.classes)]

    @property
    def channels_last(self) -> bool:
        return self.model_config.arch == "resnet"

    def build_model(self) -> nn.Module:
        m, classes = self.model_config, self.data_config.classes
        if m.arch == "transformer":
            return PatchTransformer(m.dim, m.layers, classes)
        return resnet(m.width, m.blocks_per_stage, classes)

    def train_data(self) -> TensorDataset:
        d = self.data_config
        return make_images(d.classes, d.train_examples, d.noise, d.data_seed, split=0)

    def eval_data(self) -> TensorDataset:
        d = self.data_config
        return make_images(d.classes, d.eval_examples, d.noise, d.data_seed, split=1)
