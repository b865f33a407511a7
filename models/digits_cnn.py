"""Train a small residual CNN on scikit-learn's digits and export it to ONNX.

This builds the demo model that ships with onnxpress: a realistic but tiny
convolutional network whose graph contains the patterns the compiler passes
care about (Conv followed by BatchNormalization, projection and identity
residual shortcuts, a depthwise convolution, GlobalAveragePool/Flatten and a
two-layer Gemm head). Every channel count is a multiple of 8 so that channel
pruning can be exercised on it.

The data is ``sklearn.datasets.load_digits`` (1797 8x8 grey-scale images,
10 classes), so no download is needed. Pixels are scaled to [0, 1] by dividing
by 16 and the set is split 70/30 (stratified, fixed seed) into train and test.

The model is exported with the TorchScript-based exporter (``dynamo=False``)
and ``do_constant_folding=False``: with constant folding on, that exporter
folds every BatchNorm into the preceding Conv, and the dynamo exporter's
optimizer does the same, whereas the passes under test need the unfused
BatchNormalization nodes. The exporter also de-duplicates initializers with
equal values and reconnects the duplicates through ``Identity`` nodes; in this
architecture the BN biases of the second convolution of the projection block
and of its shortcut always receive identical gradients (they are summed by the
residual Add), so they train to the same values. The script turns such
``Identity(initializer)`` nodes back into plain initializers so that every
BatchNormalization owns its parameters, as in a typical exported model.

Outputs (relative to the repository root):

* ``onnxpress/demo/digits.onnx``: the model, opset 17, input ``input``
  float32 [batch, 1, 8, 8], output ``logits`` float32 [batch, 10].
* ``onnxpress/demo/digits_test.npz``: key ``input``, the test images.
* ``onnxpress/demo/digits_test_labels.npy``: int64 test labels.
* ``onnxpress/demo/digits_calib.npz``: key ``input``, 256 training images
  for quantisation calibration.
* ``onnxpress/demo/digits.json``: test accuracy measured with onnxruntime on
  the saved file, plus the settings used to produce it.

Run from anywhere with ``python models/digits_cnn.py``; the result is
deterministic (fixed seeds, deterministic algorithms, a single thread).
"""

import collections
import json
import pathlib

import numpy as np
import onnx
import onnxruntime as ort
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn

SEED = 0
OPSET = 17
EPOCHS = 40
BATCH_SIZE = 32
LEARNING_RATE = 3e-3
N_CALIB = 256
MIN_TEST_TOP1 = 0.97

DEMO_DIR = pathlib.Path(__file__).resolve().parents[1] / "onnxpress" / "demo"


def conv_bn(in_ch, out_ch, kernel_size, stride=1, groups=1):
    """Returns a bias-free Conv2d followed by BatchNorm2d ("same" padding).

    Args:
        in_ch: Number of input channels.
        out_ch: Number of output channels.
        kernel_size: Square kernel size (odd).
        stride: Convolution stride.
        groups: Convolution groups (``in_ch`` for a depthwise convolution).

    Returns:
        An ``nn.Sequential`` of the convolution and the batch norm.
    """
    return nn.Sequential(
        nn.Conv2d(
            in_ch,
            out_ch,
            kernel_size,
            stride=stride,
            padding=kernel_size // 2,
            groups=groups,
            bias=False,
        ),
        nn.BatchNorm2d(out_ch),
    )


class ResidualBlock(nn.Module):
    """Two 3x3 Conv+BN layers with a residual shortcut, then ReLU.

    The shortcut is a 1x1 Conv+BN projection when the shape changes and the
    identity otherwise.
    """

    def __init__(self, in_ch, out_ch, stride=1):
        """Initialises the block.

        Args:
            in_ch: Number of input channels.
            out_ch: Number of output channels.
            stride: Stride of the first convolution and of the projection.
        """
        super().__init__()
        self.conv1 = conv_bn(in_ch, out_ch, 3, stride=stride)
        self.conv2 = conv_bn(out_ch, out_ch, 3)
        if stride != 1 or in_ch != out_ch:
            self.shortcut = conv_bn(in_ch, out_ch, 1, stride=stride)
        else:
            self.shortcut = nn.Identity()

    def forward(self, x):
        """Applies the block to a [N, C, H, W] tensor."""
        y = torch.relu(self.conv1(x))
        y = self.conv2(y)
        return torch.relu(y + self.shortcut(x))


class DigitsNet(nn.Module):
    """Residual CNN for 1x8x8 digit images producing 10 logits."""

    def __init__(self):
        """Builds the layers (about 26k parameters)."""
        super().__init__()
        self.stem = nn.Sequential(conv_bn(1, 16, 3), nn.ReLU())
        self.block1 = ResidualBlock(16, 32, stride=2)
        self.block2 = ResidualBlock(32, 32)
        self.depthwise = nn.Sequential(conv_bn(32, 32, 3, groups=32), nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Sequential(
            nn.Flatten(),
            nn.Linear(32, 64),
            nn.ReLU(),
            nn.Linear(64, 10),
        )

    def forward(self, x):
        """Maps a [N, 1, 8, 8] image batch to [N, 10] logits."""
        x = self.stem(x)
        x = self.block1(x)
        x = self.block2(x)
        x = self.depthwise(x)
        return self.head(self.pool(x))


def load_data():
    """Loads the digits and splits them 70/30, stratified, with ``SEED``.

    Returns:
        ``(x_train, x_test, y_train, y_test)``: float32 images of shape
        [n, 1, 8, 8] scaled to [0, 1] and int64 labels of shape [n].
    """
    digits = load_digits()
    images = (digits.images / 16.0).astype(np.float32)[:, None, :, :]
    labels = digits.target.astype(np.int64)
    return train_test_split(
        images, labels, test_size=0.3, stratify=labels, random_state=SEED
    )


def train(model, x_train, y_train):
    """Trains ``model`` in place with Adam and cross-entropy.

    Args:
        model: The network to train.
        x_train: float32 training images [n, 1, 8, 8].
        y_train: int64 training labels [n].
    """
    generator = torch.Generator().manual_seed(SEED)
    inputs = torch.from_numpy(x_train)
    targets = torch.from_numpy(y_train)
    optimizer = torch.optim.Adam(model.parameters(), lr=LEARNING_RATE)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, EPOCHS)
    loss_fn = nn.CrossEntropyLoss()
    model.train()
    for epoch in range(EPOCHS):
        order = torch.randperm(len(inputs), generator=generator)
        total_loss = 0.0
        for start in range(0, len(order), BATCH_SIZE):
            batch = order[start : start + BATCH_SIZE]
            optimizer.zero_grad()
            loss = loss_fn(model(inputs[batch]), targets[batch])
            loss.backward()
            optimizer.step()
            total_loss += loss.item() * len(batch)
        scheduler.step()
        if (epoch + 1) % 10 == 0:
            print(f"epoch {epoch + 1:3d}  loss {total_loss / len(order):.4f}")


def export(model, path):
    """Exports ``model`` (eval mode) to ONNX keeping BatchNormalization nodes.

    Args:
        model: The trained network.
        path: Destination ``.onnx`` file.
    """
    model.eval()
    torch.onnx.export(
        model,
        (torch.zeros(1, 1, 8, 8),),
        str(path),
        dynamo=False,
        do_constant_folding=False,
        opset_version=OPSET,
        input_names=["input"],
        output_names=["logits"],
        dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
    )


def inline_initializer_identities(path):
    """Replaces ``Identity`` nodes fed by an initializer with a copy of it.

    Args:
        path: The ``.onnx`` file, rewritten in place.
    """
    model = onnx.load(str(path))
    graph = model.graph
    initializers = {init.name: init for init in graph.initializer}
    for node in list(graph.node):
        if node.op_type == "Identity" and node.input[0] in initializers:
            copy = onnx.TensorProto()
            copy.CopyFrom(initializers[node.input[0]])
            copy.name = node.output[0]
            graph.initializer.append(copy)
            graph.node.remove(node)
    onnx.save(model, str(path))


def check_onnx(path):
    """Validates the exported model and returns its op-type histogram.

    Args:
        path: The ``.onnx`` file.

    Returns:
        A ``collections.Counter`` of the graph's node op types.
    """
    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)
    ops = collections.Counter(node.op_type for node in model.graph.node)
    assert ops["BatchNormalization"] == 7, ops
    assert ops["Conv"] == 7, ops
    assert "Identity" not in ops, ops
    assert model.opset_import[0].version == OPSET
    return ops


def main():
    """Trains, exports, verifies and writes all demo artefacts."""
    torch.manual_seed(SEED)
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)

    x_train, x_test, y_train, y_test = load_data()
    model = DigitsNet()
    train(model, x_train, y_train)

    model.eval()
    with torch.no_grad():
        torch_logits = model(torch.from_numpy(x_test)).numpy()
    torch_top1 = float(np.mean(torch_logits.argmax(axis=1) == y_test))
    print(f"torch test top-1: {torch_top1:.4f}")

    DEMO_DIR.mkdir(parents=True, exist_ok=True)
    onnx_path = DEMO_DIR / "digits.onnx"
    export(model, onnx_path)
    inline_initializer_identities(onnx_path)
    ops = check_onnx(onnx_path)
    print("ops:", dict(sorted(ops.items())))

    session = ort.InferenceSession(
        str(onnx_path), providers=["CPUExecutionProvider"]
    )
    ort_logits = session.run(["logits"], {"input": x_test})[0]
    ort_top1 = float(np.mean(ort_logits.argmax(axis=1) == y_test))
    max_diff = float(np.abs(ort_logits - torch_logits).max())
    print(f"onnxruntime test top-1: {ort_top1:.4f}  max |logit diff|: {max_diff:.2e}")
    assert ort_top1 == torch_top1, (ort_top1, torch_top1)
    assert max_diff < 1e-4, max_diff
    assert ort_top1 >= MIN_TEST_TOP1, ort_top1

    calib_idx = np.random.default_rng(SEED).choice(
        len(x_train), N_CALIB, replace=False
    )
    np.savez_compressed(DEMO_DIR / "digits_test.npz", input=x_test)
    np.save(DEMO_DIR / "digits_test_labels.npy", y_test)
    np.savez_compressed(
        DEMO_DIR / "digits_calib.npz", input=x_train[np.sort(calib_idx)]
    )
    info = {
        "fp32_test_top1": ort_top1,
        "n_test": len(y_test),
        "opset": OPSET,
        "trained_with": f"torch {torch.__version__.split('+')[0]}",
        "seed": SEED,
    }
    (DEMO_DIR / "digits.json").write_text(json.dumps(info, indent=2) + "\n")
    print(json.dumps(info))


if __name__ == "__main__":
    main()
