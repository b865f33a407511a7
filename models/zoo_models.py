"""Torch architectures of the development zoo (built and exported by ``build_zoo.py``).

Each class is a small but real instance of an architecture family onnxpress meets in the
wild; widths are 16-64 so the exported files stay well under 2 MB:

* `YoloV8`: Conv+BN+SiLU, C2f blocks (Split/Concat), SPPF, PAN neck, decoupled head with
  DFL (Softmax over 16 bins + a 1x1 conv with arange weights), output [B, 4 + nc, anchors]
  (xywh in pixels, sigmoid scores) like ultralytics' export.
* `MobileNetV3`: inverted residuals with depthwise convs, SE blocks (GlobalAveragePool ->
  1x1 conv -> ReLU -> 1x1 conv -> HardSigmoid -> Mul), HardSwish both as the op and as
  x * HardSigmoid(x).
* `ConvTransformerOCR`: a 12-conv stem and two pre-LN transformer blocks (hand-written
  attention with Softmax, LayerNorm, GELU), per-timestep class logits.
* `CRNN`: conv stack -> bidirectional LSTM -> Linear -> log_softmax (CTC).
* `ByteCNN`: int64 bytes -> OneHot -> dense -> LayerNorm written with ReduceSum ->
  tanh-GELU with constants on the left -> Conv1d -> global max pool -> Linear.
* `DBNet`: DB-style text detector, HardSwish as x*HardSigmoid(x) and x*Clip(x+3,0,6)/6,
  FPN with nearest upsampling, head with two ConvTranspose and a Sigmoid map.
* `ResNetLite`: a ResNet-ish CNN (BasicBlocks, projection shortcuts).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

N_DIGIT_CLASSES = 11  # CTC blank (0) + digits 0-9 (as 1-10)


# --------------------------------------------------------------------------------------------
# YOLOv8
class ConvBnSiLU(nn.Module):
    """Conv (no bias) + BatchNorm + SiLU, ultralytics' `Conv`."""

    def __init__(self, c1: int, c2: int, k: int = 1, s: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(c1, c2, k, s, k // 2, bias=False)
        self.bn = nn.BatchNorm2d(c2)

    def forward(self, x):
        return F.silu(self.bn(self.conv(x)))


class Bottleneck(nn.Module):
    """Two 3x3 ConvBnSiLU with an optional residual add."""

    def __init__(self, c: int, shortcut: bool):
        super().__init__()
        self.cv1, self.cv2, self.add = ConvBnSiLU(c, c, 3), ConvBnSiLU(c, c, 3), shortcut

    def forward(self, x):
        y = self.cv2(self.cv1(x))
        return x + y if self.add else y


class C2f(nn.Module):
    """1x1 conv, Split in two, n bottlenecks chained on the second half, Concat all, 1x1."""

    def __init__(self, c1: int, c2: int, n: int = 1, shortcut: bool = True):
        super().__init__()
        self.c = c2 // 2
        self.cv1 = ConvBnSiLU(c1, 2 * self.c, 1)
        self.cv2 = ConvBnSiLU((2 + n) * self.c, c2, 1)
        self.m = nn.ModuleList(Bottleneck(self.c, shortcut) for _ in range(n))

    def forward(self, x):
        y = list(self.cv1(x).split((self.c, self.c), 1))
        for m in self.m:
            y.append(m(y[-1]))
        return self.cv2(torch.cat(y, 1))


class SPPF(nn.Module):
    """Spatial pyramid pooling (fast): three chained 5x5 MaxPools concatenated."""

    def __init__(self, c1: int, c2: int):
        super().__init__()
        c = c1 // 2
        self.cv1, self.cv2 = ConvBnSiLU(c1, c, 1), ConvBnSiLU(4 * c, c2, 1)
        self.m = nn.MaxPool2d(5, 1, 2)

    def forward(self, x):
        y = [self.cv1(x)]
        for _ in range(3):
            y.append(self.m(y[-1]))
        return self.cv2(torch.cat(y, 1))


class YoloV8(nn.Module):
    """A YOLOv8-n-like detector for `size` x `size` RGB input, strides 8/16/32."""

    REG_MAX = 16
    STRIDES = (8, 16, 32)

    def __init__(self, nc: int = 3, size: int = 128):
        super().__init__()
        self.nc = nc
        w = (16, 32, 48, 64)
        self.b0 = nn.Sequential(ConvBnSiLU(3, w[0], 3, 2), ConvBnSiLU(w[0], w[1], 3, 2),
                                C2f(w[1], w[1]), ConvBnSiLU(w[1], w[2], 3, 2), C2f(w[2], w[2]))
        self.b1 = nn.Sequential(ConvBnSiLU(w[2], w[3], 3, 2), C2f(w[3], w[3]))
        self.b2 = nn.Sequential(ConvBnSiLU(w[3], w[3], 3, 2), C2f(w[3], w[3]), SPPF(w[3], w[3]))
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        self.n1 = C2f(2 * w[3], w[3], shortcut=False)
        self.n2 = C2f(w[3] + w[2], w[2], shortcut=False)
        self.d1 = ConvBnSiLU(w[2], w[2], 3, 2)
        self.n3 = C2f(w[2] + w[3], w[3], shortcut=False)
        self.d2 = ConvBnSiLU(w[3], w[3], 3, 2)
        self.n4 = C2f(2 * w[3], w[3], shortcut=False)
        chans = (w[2], w[3], w[3])
        self.box = nn.ModuleList(nn.Sequential(ConvBnSiLU(c, 32, 3), ConvBnSiLU(32, 32, 3),
                                               nn.Conv2d(32, 4 * self.REG_MAX, 1)) for c in chans)
        self.cls = nn.ModuleList(nn.Sequential(ConvBnSiLU(c, 32, 3), ConvBnSiLU(32, 32, 3),
                                               nn.Conv2d(32, nc, 1)) for c in chans)
        self.dfl = nn.Conv2d(self.REG_MAX, 1, 1, bias=False).requires_grad_(False)
        self.dfl.weight.data[:] = torch.arange(self.REG_MAX, dtype=torch.float32).view(
            1, self.REG_MAX, 1, 1)
        anchors, strides = [], []
        for s in self.STRIDES:
            g = size // s
            yy, xx = torch.meshgrid(torch.arange(g) + 0.5, torch.arange(g) + 0.5, indexing="ij")
            anchors.append(torch.stack((xx.flatten(), yy.flatten())))
            strides.append(torch.full((1, g * g), float(s)))
        self.register_buffer("anchors", torch.cat(anchors, 1))
        self.register_buffer("strides", torch.cat(strides, 1))

    def raw(self, x):
        """Per-level raw head outputs [B, 4*16 + nc, H*W] concatenated over anchors."""
        p3 = self.b0(x)
        p4 = self.b1(p3)
        p5 = self.b2(p4)
        t4 = self.n1(torch.cat((self.up(p5), p4), 1))
        o3 = self.n2(torch.cat((self.up(t4), p3), 1))
        o4 = self.n3(torch.cat((self.d1(o3), t4), 1))
        o5 = self.n4(torch.cat((self.d2(o4), p5), 1))
        outs = []
        for i, f in enumerate((o3, o4, o5)):
            y = torch.cat((self.box[i](f), self.cls[i](f)), 1)
            outs.append(y.flatten(2))
        return torch.cat(outs, 2)

    def forward(self, x):
        y = self.raw(x)
        b = y.shape[0]
        box, cls = y.split((4 * self.REG_MAX, self.nc), 1)
        dist = self.dfl(box.view(b, 4, self.REG_MAX, -1).transpose(2, 1).softmax(1)).view(b, 4, -1)
        lt, rb = dist.chunk(2, 1)
        x1y1 = self.anchors - lt
        x2y2 = self.anchors + rb
        xywh = torch.cat(((x1y1 + x2y2) / 2, x2y2 - x1y1), 1) * self.strides
        return torch.cat((xywh, cls.sigmoid()), 1)


# --------------------------------------------------------------------------------------------
# MobileNetV3
def hard_swish_mul(x):
    """HardSwish written as x * HardSigmoid(x) (two ONNX ops)."""
    return x * F.hardsigmoid(x)


class SqueezeExcite(nn.Module):
    """GlobalAveragePool -> 1x1 conv -> ReLU -> 1x1 conv -> HardSigmoid -> Mul."""

    def __init__(self, c: int):
        super().__init__()
        self.fc1, self.fc2 = nn.Conv2d(c, max(8, c // 4), 1), nn.Conv2d(max(8, c // 4), c, 1)

    def forward(self, x):
        s = F.adaptive_avg_pool2d(x, 1)
        return x * F.hardsigmoid(self.fc2(F.relu(self.fc1(s))))


class InvertedResidual(nn.Module):
    """Expand 1x1 -> depthwise kxk -> (SE) -> project 1x1, residual when shapes allow."""

    def __init__(self, c1, exp, c2, k, s, se, act):
        super().__init__()
        self.act = act
        self.expand = nn.Sequential(nn.Conv2d(c1, exp, 1, bias=False), nn.BatchNorm2d(exp))
        self.dw = nn.Sequential(nn.Conv2d(exp, exp, k, s, k // 2, groups=exp, bias=False),
                                nn.BatchNorm2d(exp))
        self.se = SqueezeExcite(exp) if se else nn.Identity()
        self.project = nn.Sequential(nn.Conv2d(exp, c2, 1, bias=False), nn.BatchNorm2d(c2))
        self.residual = s == 1 and c1 == c2

    def forward(self, x):
        y = self.se(self.act(self.dw(self.act(self.expand(x)))))
        y = self.project(y)
        return x + y if self.residual else y


class MobileNetV3(nn.Module):
    """MobileNetV3-small-like classifier for 3x32x32 input."""

    def __init__(self, classes: int = 10):
        super().__init__()
        hs = nn.Hardswish()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1, bias=False), nn.BatchNorm2d(16), hs)
        cfg = [  # c1, exp, c2, k, s, se, act
            (16, 16, 16, 3, 1, True, nn.ReLU()),
            (16, 48, 24, 3, 2, False, nn.ReLU()),
            (24, 64, 24, 3, 1, False, nn.ReLU()),
            (24, 72, 40, 5, 2, True, hs),
            (40, 96, 40, 5, 1, True, hard_swish_mul),
            (40, 96, 48, 5, 1, True, hs),
        ]
        self.blocks = nn.Sequential(*(InvertedResidual(*c) for c in cfg))
        self.last = nn.Sequential(nn.Conv2d(48, 96, 1, bias=False), nn.BatchNorm2d(96))
        self.head = nn.Conv2d(96, 128, 1)
        self.fc = nn.Linear(128, classes)

    def forward(self, x):
        y = hard_swish_mul(self.last(self.blocks(self.stem(x))))
        y = F.hardswish(self.head(F.adaptive_avg_pool2d(y, 1)))
        return self.fc(torch.flatten(y, 1))


# --------------------------------------------------------------------------------------------
# OCR: conv stem + transformer, and CRNN
def conv_bn_relu(c1, c2, s=(1, 1)):
    """3x3 Conv + BN + ReLU with a (h, w) stride."""
    return nn.Sequential(nn.Conv2d(c1, c2, 3, s, 1, bias=False), nn.BatchNorm2d(c2), nn.ReLU())


class EncoderBlock(nn.Module):
    """Pre-LN transformer block with hand-written multi-head attention."""

    def __init__(self, d: int, heads: int):
        super().__init__()
        self.h, self.dk = heads, d // heads
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv, self.out = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.mlp = nn.Sequential(nn.Linear(d, 2 * d), nn.GELU(), nn.Linear(2 * d, d))

    def forward(self, x):
        b, t, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(b, t, 3, self.h, self.dk).permute(2, 0, 3, 1, 4)
        a = torch.softmax(q @ k.transpose(-1, -2) / self.dk ** 0.5, -1) @ v
        x = x + self.out(a.transpose(1, 2).reshape(b, t, d))
        return x + self.mlp(self.ln2(x))


class ConvTransformerOCR(nn.Module):
    """12 convs (32x128 -> 4x32) + 2 transformer blocks -> [B, 32, classes] logits."""

    def __init__(self, d: int = 64, classes: int = N_DIGIT_CLASSES):
        super().__init__()
        c = (1, 16, 16, 24, 24, 32, 32, 32, 32, 32, 32, 32, 32)
        strides = {1: (2, 2), 3: (2, 2), 5: (2, 1)}
        self.stem = nn.Sequential(*(conv_bn_relu(c[i], c[i + 1], strides.get(i, (1, 1)))
                                    for i in range(12)))
        self.proj = nn.Linear(32 * 4, d)
        self.pos = nn.Parameter(torch.randn(1, 32, d) * 0.02)
        self.blocks = nn.Sequential(EncoderBlock(d, 4), EncoderBlock(d, 4))
        self.ln = nn.LayerNorm(d)
        self.fc = nn.Linear(d, classes)

    def forward(self, x):
        f = self.stem(x)  # [B, 32, 4, 32]
        f = f.flatten(1, 2).transpose(1, 2)  # [B, 32 (time), 128]
        y = self.blocks(self.proj(f) + self.pos)
        return self.fc(self.ln(y))


class CRNN(nn.Module):
    """Conv stack (32x128 -> 1x32) -> BiLSTM -> Linear -> log_softmax, [B, 32, classes]."""

    def __init__(self, hidden: int = 48, classes: int = N_DIGIT_CLASSES, widths=(16, 32, 48)):
        super().__init__()
        a, b, c = widths
        self.cnn = nn.Sequential(conv_bn_relu(1, a), nn.MaxPool2d(2),  # 16x64
                                 conv_bn_relu(a, b), nn.MaxPool2d(2),  # 8x32
                                 conv_bn_relu(b, c), conv_bn_relu(c, c),
                                 nn.MaxPool2d((2, 1)),  # 4x32
                                 conv_bn_relu(c, c), nn.MaxPool2d((4, 1)))  # 1x32
        self.rnn = nn.LSTM(c, hidden, bidirectional=True, batch_first=True)
        self.fc = nn.Linear(2 * hidden, classes)

    def forward(self, x):
        f = self.cnn(x).squeeze(2).transpose(1, 2)  # [B, 32, C]
        y, _ = self.rnn(f)
        return F.log_softmax(self.fc(y), -1)


# --------------------------------------------------------------------------------------------
# Byte classifier (jax2tf-style decomposed LayerNorm and tanh-GELU)
class SumLayerNorm(nn.Module):
    """LayerNorm as jax2tf writes it: mean = ReduceSum(x)/n, var = ReduceSum(x^2)/n - mean^2."""

    def __init__(self, d: int, eps: float = 1e-6):
        super().__init__()
        self.gamma, self.beta = nn.Parameter(torch.ones(d)), nn.Parameter(torch.zeros(d))
        self.register_buffer("inv_n", torch.tensor(1.0 / d))
        self.register_buffer("eps", torch.tensor(eps))

    def forward(self, x):
        mean = self.inv_n * torch.sum(x, -1, keepdim=True)
        var = self.inv_n * torch.sum(x * x, -1, keepdim=True) - mean * mean
        return (x - mean) * torch.rsqrt(var + self.eps) * self.gamma + self.beta


class TanhGelu(nn.Module):
    """0.5 * x * (1 + tanh(c * (x + 0.044715 * x^3))) with every constant on the left."""

    def __init__(self):
        super().__init__()
        for name, v in (("c_half", 0.5), ("c_one", 1.0), ("c_sqrt", (2 / torch.pi) ** 0.5),
                        ("c_cube", 0.044715), ("c_three", 3.0)):
            self.register_buffer(name, torch.tensor(v))

    def forward(self, x):
        inner = self.c_sqrt * (x + self.c_cube * torch.pow(x, self.c_three))
        return self.c_half * x * (self.c_one + torch.tanh(inner))


class ByteCNN(nn.Module):
    """int64 bytes [B, L] -> OneHot(256) -> dense -> LN -> GELU -> Conv1d -> max -> logits."""

    def __init__(self, d: int = 32, classes: int = 4):
        super().__init__()
        self.embed = nn.Linear(256, d)
        self.ln1, self.ln2 = SumLayerNorm(d), SumLayerNorm(48)
        self.gelu = TanhGelu()
        self.conv = nn.Conv1d(d, 48, 5, padding=2)
        self.fc = nn.Linear(48, classes)

    def forward(self, x):
        h = self.gelu(self.ln1(self.embed(F.one_hot(x, 256).float())))  # [B, L, d]
        h = self.gelu(self.conv(h.transpose(1, 2)))  # [B, 48, L]
        h = torch.amax(h, -1)
        return self.fc(self.ln2(h))


# --------------------------------------------------------------------------------------------
# DB text detector (paddle-style)
def hard_swish_clip(x):
    """HardSwish written as x * Clip(x + 3, 0, 6) / 6."""
    return x * torch.clamp(x + 3, 0, 6) / 6


class ConvBnAct(nn.Module):
    """Conv + BN + an activation function (a paddle ConvBNLayer)."""

    def __init__(self, c1, c2, k, s, act, groups=1):
        super().__init__()
        self.conv = nn.Conv2d(c1, c2, k, s, k // 2, groups=groups, bias=False)
        self.bn, self.act = nn.BatchNorm2d(c2), act

    def forward(self, x):
        return self.act(self.bn(self.conv(x)))


class DBNet(nn.Module):
    """Depthwise-separable backbone (strides 4/8/16), FPN to 32 channels, DB head."""

    def __init__(self):
        super().__init__()
        a, b = hard_swish_mul, hard_swish_clip
        self.stem = nn.Sequential(ConvBnAct(3, 16, 3, 2, a), ConvBnAct(16, 16, 3, 1, b, 16),
                                  ConvBnAct(16, 24, 1, 1, a))
        self.s4 = nn.Sequential(ConvBnAct(24, 24, 3, 2, b, 24), ConvBnAct(24, 32, 1, 1, a))
        self.s8 = nn.Sequential(ConvBnAct(32, 32, 3, 2, a, 32), ConvBnAct(32, 48, 1, 1, b))
        self.s16 = nn.Sequential(ConvBnAct(48, 48, 5, 2, b, 48), ConvBnAct(48, 64, 1, 1, a))
        self.lat = nn.ModuleList(nn.Conv2d(c, 32, 1, bias=False) for c in (32, 48, 64))
        self.smooth = nn.ModuleList(nn.Conv2d(32, 8, 3, 1, 1, bias=False) for _ in range(3))
        self.head = nn.Sequential(nn.Conv2d(24, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16),
                                  nn.ReLU(), nn.ConvTranspose2d(16, 16, 2, 2),
                                  nn.BatchNorm2d(16), nn.ReLU(), nn.ConvTranspose2d(16, 1, 2, 2))

    def forward(self, x):
        c4 = self.s4(self.stem(x))
        c8 = self.s8(c4)
        c16 = self.s16(c8)
        p16 = self.lat[2](c16)
        p8 = self.lat[1](c8) + F.interpolate(p16, scale_factor=2.0, mode="nearest")
        p4 = self.lat[0](c4) + F.interpolate(p8, scale_factor=2.0, mode="nearest")
        f = torch.cat([self.smooth[0](p4),
                       F.interpolate(self.smooth[1](p8), scale_factor=2.0, mode="nearest"),
                       F.interpolate(self.smooth[2](p16), scale_factor=4.0, mode="nearest")], 1)
        return torch.sigmoid(self.head(f))


# --------------------------------------------------------------------------------------------
# ResNet-ish CNN
class BasicBlock(nn.Module):
    """Two 3x3 Conv+BN with a (projected) shortcut, ReLU after the add."""

    def __init__(self, c1, c2, s):
        super().__init__()
        self.c1, self.b1 = nn.Conv2d(c1, c2, 3, s, 1, bias=False), nn.BatchNorm2d(c2)
        self.c2, self.b2 = nn.Conv2d(c2, c2, 3, 1, 1, bias=False), nn.BatchNorm2d(c2)
        self.short = (nn.Sequential(nn.Conv2d(c1, c2, 1, s, bias=False), nn.BatchNorm2d(c2))
                      if s != 1 or c1 != c2 else nn.Identity())

    def forward(self, x):
        y = self.b2(self.c2(F.relu(self.b1(self.c1(x)))))
        return F.relu(y + self.short(x))


class ResNetLite(nn.Module):
    """Stem + 4 stages of BasicBlocks (16-64 wide) + GAP + FC, for 1x32x32 input."""

    def __init__(self, c_in: int = 1, classes: int = 10, blocks=(1, 1, 1, 1)):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(c_in, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16),
                                  nn.ReLU())
        layers, c = [], 16
        for i, (w, n) in enumerate(zip((16, 32, 48, 64), blocks, strict=True)):
            for j in range(n):
                layers.append(BasicBlock(c, w, 2 if (j == 0 and i > 0) else 1))
                c = w
        self.layers = nn.Sequential(*layers)
        self.fc = nn.Linear(c, classes)

    def forward(self, x):
        y = F.adaptive_avg_pool2d(self.layers(self.stem(x)), 1)
        return self.fc(torch.flatten(y, 1))
