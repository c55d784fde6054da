"""ACNet's networks (Ren et al., "ACNet: Approaching-and-Centralizing Network for Zero-Shot Sketch-Based Image
Retrieval", IEEE TCSVT 2023; official code leftthomas/ACNet ``model.py``): the sketch-to-photo generator G
(a slim CycleGAN ResNet generator), the PatchGAN discriminator D (LSGAN, no sigmoid), the retrieval
extractor E (timm ResNet-50 / VGG-16, global max pooling, Linear to d, L2-normalised) and the class proxies
of the normalised-softmax loss. :class:`ACNet` holds the four, so one checkpoint carries them all."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from zsk.core.checkpoint import read_state_dict
from zsk.core.errors import ZskError


class ResidualBlock(nn.Module):
    """Two reflect-padded 3x3 convs with InstanceNorm and a ReLU between them, plus the identity skip."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(channels, channels, 3, padding=1, padding_mode="reflect"), nn.InstanceNorm2d(channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(channels, channels, 3, padding=1, padding_mode="reflect"), nn.InstanceNorm2d(channels))

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv(x)


class Generator(nn.Module):
    """Sketch -> photo generator G: 7x7 in-conv (C), two stride-2 downsamplings (2C, 4C), ``num_blocks``
    residual blocks, two transposed-conv upsamplings, 7x7 out-conv + tanh. Input and output in [-1, 1]."""

    def __init__(self, channels: int = 8, num_blocks: int = 8) -> None:
        super().__init__()
        c = channels
        self.in_conv = nn.Sequential(nn.Conv2d(3, c, 7, padding=3, padding_mode="reflect"), nn.InstanceNorm2d(c),
                                     nn.ReLU(inplace=True))
        down: list[nn.Module] = []
        for _ in range(2):
            down += [nn.Conv2d(c, 2 * c, 3, stride=2, padding=1), nn.InstanceNorm2d(2 * c), nn.ReLU(inplace=True)]
            c *= 2
        self.down_sample = nn.Sequential(*down)
        self.convs = nn.Sequential(*[ResidualBlock(c) for _ in range(num_blocks)])
        up: list[nn.Module] = []
        for _ in range(2):
            up += [nn.ConvTranspose2d(c, c // 2, 3, stride=2, padding=1, output_padding=1),
                   nn.InstanceNorm2d(c // 2), nn.ReLU(inplace=True)]
            c //= 2
        self.up_sample = nn.Sequential(*up)
        self.out_conv = nn.Sequential(nn.Conv2d(c, 3, 7, padding=3, padding_mode="reflect"), nn.Tanh())

    def forward(self, x: Tensor) -> Tensor:
        return self.out_conv(self.up_sample(self.convs(self.down_sample(self.in_conv(x)))))


class Discriminator(nn.Module):
    """PatchGAN discriminator D: four 4x4 convs (C, 2C, 4C, 8C; InstanceNorm from the second on,
    LeakyReLU 0.2), then a 4x4 conv to one patch logit map (no sigmoid: LSGAN)."""

    def __init__(self, channels: int = 8) -> None:
        super().__init__()
        c = channels
        self.conv1 = nn.Sequential(nn.Conv2d(3, c, 4, stride=2, padding=1), nn.LeakyReLU(0.2, inplace=True))
        self.conv2 = nn.Sequential(nn.Conv2d(c, 2 * c, 4, stride=2, padding=1), nn.InstanceNorm2d(2 * c),
                                   nn.LeakyReLU(0.2, inplace=True))
        self.conv3 = nn.Sequential(nn.Conv2d(2 * c, 4 * c, 4, stride=2, padding=1), nn.InstanceNorm2d(4 * c),
                                   nn.LeakyReLU(0.2, inplace=True))
        self.conv4 = nn.Sequential(nn.Conv2d(4 * c, 8 * c, 4, padding=1), nn.InstanceNorm2d(8 * c),
                                   nn.LeakyReLU(0.2, inplace=True))
        self.conv5 = nn.Conv2d(8 * c, 1, 4, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv5(self.conv4(self.conv3(self.conv2(self.conv1(x)))))


def _load_backbone_file(net: nn.Module, path: Path, name: str) -> None:
    """Load ImageNet weights from a state-dict file: timm's keys, or torchvision's (VGG's classifier layers
    are mapped by timm's own ``checkpoint_filter_fn``). The classifier head is never loaded: it is replaced
    by the embedding layer."""
    state = read_state_dict(path, "model.pretrained: weights file",
                            f"pass a local {name} state dict (timm or torchvision keys) with "
                            f"--set model.pretrained=/path/to/{name}.pth")
    if name == "vgg16" and "classifier.0.weight" in state:
        from timm.models.vgg import checkpoint_filter_fn

        state = checkpoint_filter_fn(state, net)
    own = net.state_dict()
    head = {f"{prefix}.{k}" for prefix in ("fc", "head.fc") for k in ("weight", "bias")} & set(own)
    state = {k: v for k, v in state.items() if k not in head and k not in ("fc.weight", "fc.bias")}
    if not set(state) & set(own):
        raise ZskError(f"model.pretrained: {path} does not match timm's {name} (no key matched); give {name} weights")
    wrong = [k for k, v in state.items() if k in own and tuple(v.shape) != tuple(own[k].shape)]
    if wrong:
        raise ZskError(f"model.pretrained: {path} does not fit timm's {name}: {wrong[0]} has shape "
                       f"{list(state[wrong[0]].shape)}, expected {list(own[wrong[0]].shape)}")
    missing = sorted(k for k in set(own) - set(state) - head if not k.endswith("num_batches_tracked"))
    if missing:
        raise ZskError(f"model.pretrained: {path} lacks {len(missing)} weights of {name} (e.g. {missing[0]}); "
                       "give the full ImageNet state dict")
    net.load_state_dict({k: v for k, v in state.items() if k in own}, strict=False)


class Extractor(nn.Module):
    """Retrieval extractor E: a timm classification network with global max pooling whose classifier is a
    fresh Linear to ``emb_dim``; the output is L2-normalised (ACNet ``Extractor``)."""

    def __init__(self, backbone: str = "resnet50", emb_dim: int = 512, pretrained: str | None = None,
                 norm: str = "batchnorm") -> None:
        super().__init__()
        import timm

        kwargs = {}
        if norm == "groupnorm1":  # one group: normalisation per sample, identical in training and evaluation
            from timm.layers import GroupNorm1

            kwargs["norm_layer"] = GroupNorm1

        if pretrained == "imagenet":
            try:
                self.backbone = timm.create_model(backbone, pretrained=True, num_classes=emb_dim, global_pool="max")
            except Exception as e:  # noqa: BLE001 - no cached weights and no network
                raise ZskError(f"model.pretrained=imagenet: timm's {backbone} ImageNet weights are not in the local "
                               f"cache and cannot be downloaded ({type(e).__name__}); pass a local state dict with "
                               f"--set model.pretrained=/path/to/{backbone}.pth") from None
        else:
            self.backbone = timm.create_model(backbone, pretrained=False, num_classes=emb_dim, global_pool="max", **kwargs)
            if pretrained is not None:
                _load_backbone_file(self.backbone, Path(pretrained), backbone)

    def last_layer(self) -> nn.Module:
        """The embedding Linear (the only part trained during the warm-up)."""
        return self.backbone.get_classifier()

    def set_warmup(self, warmup: bool) -> None:
        """During the warm-up only the embedding Linear trains: every other weight stops requiring gradients
        (ACNet freezes ``list(backbone.parameters())[:-2]``, which are the same tensors); gradients still flow
        through E into the generator."""
        head = {id(p) for p in self.last_layer().parameters()}
        for p in self.backbone.parameters():
            if id(p) not in head:
                p.requires_grad_(not warmup)

    def forward(self, x: Tensor) -> Tensor:
        return F.normalize(self.backbone(x), dim=-1)


def set_batchnorm_eval(module: nn.Module) -> None:
    """Keep every BatchNorm of ``module`` in eval mode (running statistics frozen), as ACNet's ``set_bn_eval``."""
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()


class ACNet(nn.Module):
    """G, D, E and the class proxies (one learnable proxy per seen class, normalised on use)."""

    def __init__(self, num_classes: int, backbone: str = "resnet50", emb_dim: int = 512, pretrained: str | None = None,
                 generator_channels: int = 8, generator_blocks: int = 8, discriminator_channels: int = 8,
                 frozen_bn: bool = True, norm: str = "batchnorm") -> None:
        super().__init__()
        self.frozen_bn = frozen_bn
        self.generator = Generator(generator_channels, generator_blocks)
        self.discriminator = Discriminator(discriminator_channels)
        self.extractor = Extractor(backbone, emb_dim, pretrained, norm)
        # pytorch-metric-learning NormalizedSoftmaxLoss keeps W (emb_dim, classes) ~ N(0, 1); here one row per class
        self.proxies = nn.Parameter(torch.randn(num_classes, emb_dim))

    def train(self, mode: bool = True) -> ACNet:
        super().train(mode)
        if self.frozen_bn:
            set_batchnorm_eval(self.extractor)  # BatchNorm stays in eval mode throughout (train.py)
        return self

    def forward(self, sketch: Tensor, photo: Tensor) -> dict[str, Tensor]:
        """Every tensor one ACNet training step needs (train.py ``train``): the fake photo f = G(s), D(f)
        with D's weights held constant (the generator's adversarial term must not train D), G(p) for the
        identity term, the three embeddings E(s), E(p), E(f), and D(p), D(f.detach()) for the discriminator."""
        fake = self.generator(sketch)
        d_params = [p for p in self.discriminator.parameters() if p.requires_grad]
        for p in d_params:
            p.requires_grad_(False)
        try:
            pred_fake = self.discriminator(fake)
        finally:
            for p in d_params:
                p.requires_grad_(True)
        return {"fake": fake, "pred_fake": pred_fake, "reconstructed": self.generator(photo),
                "emb_sketch": self.extractor(sketch), "emb_photo": self.extractor(photo), "emb_fake": self.extractor(fake),
                "pred_photo": self.discriminator(photo), "pred_fake_detached": self.discriminator(fake.detach())}

    def embed_photos(self, photo: Tensor) -> Tensor:
        """Gallery embeddings E(p)."""
        return self.extractor(photo)

    def embed_sketches(self, sketch: Tensor) -> Tensor:
        """Query embeddings E(G(s)): the sketch is first translated into a photo."""
        return self.extractor(self.generator(sketch))
