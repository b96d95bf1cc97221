"""Small feature extractors for the `ddpm-plus fid` tests, loaded as `--feature-extractor
helpers.feature_extractors:TinyFeatures` (RGB) or `helpers.feature_extractors:tiny_grey_features`: fixed weights,
uint8 images (B, C, H, W) → 16 features and 10 logits."""

import torch


class TinyFeatures(torch.nn.Module):
    """A strided convolution, ReLU and 2x2 average pooling (16 features), and a linear layer on them (10 logits);
    the weights come from a fixed seed, so every process and every run has the same ones."""

    def __init__(self, channels: int = 3) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(0)
        self.conv = torch.nn.Conv2d(channels, 4, kernel_size=3, stride=2)
        self.classifier = torch.nn.Linear(16, 10)
        with torch.no_grad():
            for parameter in self.parameters():
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.5)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        hidden = torch.relu(self.conv(images.float() / 127.5 - 1))
        features = torch.nn.functional.adaptive_avg_pool2d(hidden, 2).flatten(1)
        return features, self.classifier(features)


def tiny_grey_features() -> TinyFeatures:
    return TinyFeatures(channels=1)
