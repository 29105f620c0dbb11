"""A small CNN for small grayscale images (e.g. 28x28 digits), fast on CPU."""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["SmallCNN"]


class SmallCNN(nn.Module):
    """``depth`` blocks of conv3x3-BN-ReLU-conv3x3-BN-ReLU-maxpool2 (block ``i`` has ``width * 2**i``
    channels), global average pooling and a linear head.

    ``input_size`` is the expected side length; it only has to survive ``depth`` halvings (the
    pooling is global, so other sizes work too).
    """

    def __init__(
        self, in_channels: int = 1, n_classes: int = 10, width: int = 32, depth: int = 2, input_size: int = 28
    ) -> None:
        super().__init__()
        if depth < 1 or width < 1:
            raise ValueError("depth and width must be >= 1")
        if input_size >> depth < 1:
            raise ValueError(f"input_size {input_size} is too small for {depth} poolings")
        self.in_channels = in_channels
        self.n_classes = n_classes
        self.width = width
        self.depth = depth
        self.input_size = input_size
        blocks: list[nn.Module] = []
        c_in = in_channels
        for i in range(depth):
            c = width * 2**i
            blocks += [
                nn.Conv2d(c_in, c, 3, padding=1, bias=False),
                nn.BatchNorm2d(c),
                nn.ReLU(inplace=True),
                nn.Conv2d(c, c, 3, padding=1, bias=False),
                nn.BatchNorm2d(c),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(2),
            ]
            c_in = c
        self.features = nn.Sequential(*blocks)
        self.embedding_dim = c_in
        self.head = nn.Linear(c_in, n_classes)

    def embed(self, x: Tensor) -> Tensor:
        """Penultimate embedding ``[B, embedding_dim]`` (globally average-pooled features)."""
        return torch.flatten(nn.functional.adaptive_avg_pool2d(self.features(x), 1), 1)

    def forward(self, x: Tensor) -> Tensor:
        """Logits ``[B, n_classes]`` for images ``[B, in_channels, H, W]``."""
        return self.head(self.embed(x))
