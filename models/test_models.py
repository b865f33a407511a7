"""Build the small reference ONNX models used by the round-trip tests.

The test-suite must not depend on torch, so the models are produced once by
this script and committed under ``tests/models/`` together with a generated
``README.md`` describing each file. They cover the shapes of graphs that
onnxpress meets in practice:

* ``torch_cnn_opset{12,13,15,17,18}.onnx``: one small residual CNN
  (Conv/BatchNormalization/Relu/MaxPool/Add/Flatten/Gemm) exported by the
  TorchScript-based exporter (``dynamo=False``) at each opset, with
  ``do_constant_folding=False`` so that BatchNormalization is not folded into
  the convolutions.
* ``torch_cnn_opset21.onnx``: the same network exported by the
  torch.export-based ("dynamo") exporter, which implements opset 21 natively
  (the TorchScript exporter stops at opset 20). ``optimize=False`` keeps the
  BatchNormalization nodes and the exporter's raw symbolic-shape arithmetic
  for the dynamic batch dimension.
* ``torch_transformer.onnx``: a two-layer post-LayerNorm transformer encoder
  exported by the TorchScript exporter at opset 14, where LayerNorm and GELU
  are decomposed into primitive ops (ReduceMean/Sub/Pow/Sqrt/Div and Erf).
  Attention is written out by hand because ``nn.MultiheadAttention`` traces
  the sequence length into constant Reshape shapes with this exporter.
* ``torch_transformer_opset18.onnx``: the same encoder exported by the dynamo
  exporter with its default optimizer (LayerNormalization stays fused).
* ``control_flow_if_loop.onnx``: written in ONNX text format; an ``If`` and a
  ``Loop`` whose bodies read outer-scope initializers and activations by name,
  next to foldable constant arithmetic and a dead node chain.
* ``constant_node_weights.onnx``: a small CNN exported at opset 13 whose
  initializers are then all turned into ``Constant`` nodes at the top of the
  graph, mimicking tf2onnx / paddle2onnx output.
* ``opset21_mixed.onnx``: written in ONNX text format at opset 21, full of
  no-op Identity/Dropout/Cast/Transpose/Reshape nodes, an Unsqueeze+Squeeze
  pair and Shape->Gather->... chains over static dimensions.

Weights of the torch models come from seeded random initialisation, with the
normalisation parameters and statistics randomised as well: freshly
initialised BatchNorm/LayerNorm parameters are all ones and zeros, which would
hide numerical bugs and makes the TorchScript exporter de-duplicate them into
Identity nodes. File paths recorded in the dynamo exporter's per-node
``pkg.torch.onnx.stack_trace`` metadata are machine-specific, so those entries
are removed; the other metadata is kept.

Every model is checked with ``onnx.checker.check_model(full_check=True)`` and
run with onnxruntime (CPUExecutionProvider) on seeded random inputs for two
values of the dynamic dimensions; the results are compared against torch, or
against ``onnx.reference.ReferenceEvaluator`` for the hand-written models.

Run from anywhere with ``python models/test_models.py``.
"""

import collections
import dataclasses
import functools
import io
import pathlib
from collections.abc import Callable

import numpy as np
import onnx
import onnx.numpy_helper
import onnx.parser
import onnxruntime as ort
import torch
from onnx.reference import ReferenceEvaluator
from torch import nn

SEED = 0
OUT_DIR = pathlib.Path(__file__).resolve().parents[1] / "tests" / "models"
MAX_FILE_BYTES = 300 * 1024
VOCAB_SIZE = 100
MAX_SEQ_LEN = 64
DYNAMIC_DIM_VALUES = (1, 5)
TOLERANCE = 1e-4

Feeds = dict[str, np.ndarray]
Reference = Callable[[Feeds], list[np.ndarray]]


@dataclasses.dataclass
class BuiltModel:
    """A generated model with what is needed to verify and document it.

    Attributes:
        model: The ONNX model.
        reference: Computes the expected outputs for given inputs.
        produced_by: One-line description of how the model was produced.
    """

    model: onnx.ModelProto
    reference: Reference
    produced_by: str


# --------------------------------------------------------------------------
# torch modules
# --------------------------------------------------------------------------


class SmallCNN(nn.Module):
    """Residual CNN mapping [N, 3, 16, 16] images to [N, 10] logits."""

    def __init__(self):
        """Builds the layers."""
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(8)
        self.pool = nn.MaxPool2d(2)
        self.fc = nn.Linear(8 * 8 * 8, 10)

    def forward(self, x):
        """Applies the network."""
        y = torch.relu(self.bn1(self.conv1(x)))
        y = torch.relu(self.bn2(self.conv2(y)) + y)
        return self.fc(torch.flatten(self.pool(y), 1))


class TinyCNN(nn.Module):
    """Plain CNN mapping [N, 3, 8, 8] images to [N, 10] logits."""

    def __init__(self):
        """Builds the layers."""
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1),
            nn.BatchNorm2d(8),
            nn.ReLU(),
            nn.Conv2d(8, 16, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.classifier = nn.Sequential(
            nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 10)
        )

    def forward(self, x):
        """Applies the network."""
        return self.classifier(self.features(x))


class EncoderLayer(nn.Module):
    """Post-LayerNorm transformer encoder layer with GELU feed-forward."""

    def __init__(self, d_model, n_heads, d_ff):
        """Builds the layer.

        Args:
            d_model: Embedding width.
            n_heads: Number of attention heads (must divide ``d_model``).
            d_ff: Hidden width of the feed-forward block.
        """
        super().__init__()
        self.n_heads = n_heads
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.attn_out = nn.Linear(d_model, d_model)
        self.norm1 = nn.LayerNorm(d_model)
        self.feed_forward = nn.Sequential(
            nn.Linear(d_model, d_ff), nn.GELU(), nn.Linear(d_ff, d_model)
        )
        self.norm2 = nn.LayerNorm(d_model)

    def forward(self, x):
        """Applies self-attention and the feed-forward block to [B, S, D]."""
        batch, seq, width = x.shape
        head_dim = width // self.n_heads
        qkv = self.qkv(x).reshape(batch, seq, 3, self.n_heads, head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        scores = (q @ k.transpose(-1, -2)) * head_dim**-0.5
        attended = torch.softmax(scores, dim=-1) @ v
        attended = attended.transpose(1, 2).reshape(batch, seq, width)
        x = self.norm1(x + self.attn_out(attended))
        return self.norm2(x + self.feed_forward(x))


class TinyTransformer(nn.Module):
    """Token + learned position embeddings, two encoder layers, LayerNorm."""

    def __init__(self):
        """Builds the layers (d_model 32, 4 heads, feed-forward 64)."""
        super().__init__()
        self.tokens = nn.Embedding(VOCAB_SIZE, 32)
        self.positions = nn.Parameter(torch.randn(MAX_SEQ_LEN, 32) * 0.02)
        self.layers = nn.Sequential(EncoderLayer(32, 4, 64), EncoderLayer(32, 4, 64))
        self.norm = nn.LayerNorm(32)

    def forward(self, input_ids):
        """Maps int64 token ids [B, S] to float embeddings [B, S, 32]."""
        x = self.tokens(input_ids) + self.positions[: input_ids.shape[1]]
        return self.norm(self.layers(x))


def randomize_norm_layers(module):
    """Gives every BatchNorm/LayerNorm non-trivial parameters and statistics.

    Args:
        module: Module whose normalisation layers are modified in place.
    """
    with torch.no_grad():
        for layer in module.modules():
            if isinstance(layer, (nn.BatchNorm2d, nn.LayerNorm)):
                layer.weight.uniform_(0.5, 1.5)
                layer.bias.normal_(0.0, 0.1)
            if isinstance(layer, nn.BatchNorm2d):
                layer.running_mean.normal_(0.0, 0.1)
                layer.running_var.uniform_(0.5, 1.5)


def make_module(module_class):
    """Instantiates ``module_class`` with seeded, randomised weights.

    Args:
        module_class: A no-argument ``nn.Module`` subclass.

    Returns:
        The module in eval mode.
    """
    torch.manual_seed(SEED)
    module = module_class()
    randomize_norm_layers(module)
    return module.eval()


def torch_reference(module, input_name):
    """Wraps a single-input, single-output module as a ``Reference``.

    Args:
        module: The torch module.
        input_name: Name of the ONNX graph input fed to the module.

    Returns:
        A function computing the module's output from ONNX-style feeds.
    """

    def run(feeds):
        with torch.no_grad():
            return [module(torch.from_numpy(feeds[input_name])).numpy()]

    return run


def export_torchscript(module, example, input_name, output_name, dynamic_axes, opset, **kwargs):
    """Exports with the TorchScript-based exporter.

    Args:
        module: The module to export.
        example: Example input tensor.
        input_name: Name of the graph input.
        output_name: Name of the graph output.
        dynamic_axes: ``{axis: dim_param}`` shared by the input and output.
        opset: Target opset.
        **kwargs: Further ``torch.onnx.export`` options.

    Returns:
        The exported ``onnx.ModelProto``.
    """
    buffer = io.BytesIO()
    torch.onnx.export(
        module,
        (example,),
        buffer,
        dynamo=False,
        opset_version=opset,
        input_names=[input_name],
        output_names=[output_name],
        dynamic_axes={input_name: dynamic_axes, output_name: dynamic_axes},
        **kwargs,
    )
    return onnx.load_from_string(buffer.getvalue())


def export_dynamo(module, example, input_name, output_name, dynamic_shapes, opset, **kwargs):
    """Exports with the torch.export-based exporter and strips stack traces.

    Args:
        module: The module to export.
        example: Example input tensor.
        input_name: Name of the graph input.
        output_name: Name of the graph output.
        dynamic_shapes: ``{axis: torch.export.Dim}`` for the input.
        opset: Target opset.
        **kwargs: Further ``torch.onnx.export`` options.

    Returns:
        The exported ``onnx.ModelProto``.
    """
    program = torch.onnx.export(
        module,
        (example,),
        dynamo=True,
        external_data=False,
        verbose=False,
        opset_version=opset,
        input_names=[input_name],
        output_names=[output_name],
        dynamic_shapes=(dynamic_shapes,),
        **kwargs,
    )
    model = program.model_proto
    for node in model.graph.node:
        kept = [p for p in node.metadata_props if p.key != "pkg.torch.onnx.stack_trace"]
        del node.metadata_props[:]
        node.metadata_props.extend(kept)
    return model


# --------------------------------------------------------------------------
# model builders
# --------------------------------------------------------------------------


def build_torch_cnn(opset):
    """Exports ``SmallCNN`` at ``opset``, keeping BatchNormalization.

    Args:
        opset: 12 to 20 use the TorchScript exporter, 21 the dynamo exporter.

    Returns:
        The ``BuiltModel``.
    """
    module = make_module(SmallCNN)
    example = torch.randn(2, 3, 16, 16)
    if opset <= 20:
        model = export_torchscript(
            module, example, "input", "logits", {0: "batch"}, opset, do_constant_folding=False
        )
        how = "torch.onnx.export(dynamo=False, do_constant_folding=False)"
    else:
        batch = torch.export.Dim("batch")
        model = export_dynamo(
            module, example, "input", "logits", {0: batch}, opset, optimize=False
        )
        how = "torch.onnx.export(dynamo=True, optimize=False)"
    return BuiltModel(
        model,
        torch_reference(module, "input"),
        f"`SmallCNN` (seeded random weights), {how}, opset {opset}",
    )


def build_torch_transformer():
    """Exports ``TinyTransformer`` at opset 14 (decomposed LayerNorm/GELU).

    Returns:
        The ``BuiltModel``.
    """
    module = make_module(TinyTransformer)
    example = torch.randint(0, VOCAB_SIZE, (2, 7))
    model = export_torchscript(
        module, example, "input_ids", "embeddings", {0: "batch", 1: "seq"}, 14
    )
    return BuiltModel(
        model,
        torch_reference(module, "input_ids"),
        "`TinyTransformer` (seeded random weights), "
        "torch.onnx.export(dynamo=False), opset 14; LayerNorm and GELU decomposed",
    )


def build_torch_transformer_opset18():
    """Exports ``TinyTransformer`` with the dynamo exporter at opset 18.

    Returns:
        The ``BuiltModel``.
    """
    module = make_module(TinyTransformer)
    example = torch.randint(0, VOCAB_SIZE, (2, 7))
    dims = {
        0: torch.export.Dim("batch"),
        1: torch.export.Dim("seq", max=MAX_SEQ_LEN),
    }
    model = export_dynamo(module, example, "input_ids", "embeddings", dims, 18)
    return BuiltModel(
        model,
        torch_reference(module, "input_ids"),
        "`TinyTransformer` (seeded random weights), "
        "torch.onnx.export(dynamo=True) with its default optimizer, opset 18; "
        "LayerNormalization fused, GELU decomposed",
    )


CONTROL_FLOW_TEXT = """
<ir_version: 8, opset_import: ["" : 17]>
control_flow (float[N,4] input) => (float[N,4] branch_out, float[N,4] loop_out)
<float[4] bias = {0.1, -0.2, 0.3, -0.4}, float[4] decay = {0.5, 0.5, 0.5, 0.5},
 float three = {3.0}, float zero = {0.0}, int64 trip_count = {3},
 bool keep_going = {1}>
{
    hidden = MatMul (input, weight)
    hidden_b = Add (hidden, bias)
    two = Constant <value = float {2.0}> ()
    six = Mul (two, three)
    scale = Div (six, two)
    dead = Sigmoid (hidden)
    dead_scaled = Mul (dead, scale)
    total = ReduceSum <keepdims = 0> (input)
    positive = Greater (total, zero)
    branch_out = If (positive) <
        then_branch = then_graph () => (float[N,4] then_out) {
            then_out = Mul (hidden_b, scale)
        },
        else_branch = else_graph () => (float[N,4] else_out) {
            else_out = Sub (hidden, bias)
        }
    >
    loop_out = Loop (trip_count, keep_going, input) <
        body = loop_body (int64 iteration, bool cond_in, float[N,4] state_in)
                => (bool cond_out, float[N,4] state_out) {
            cond_out = Identity (cond_in)
            decayed = Mul (state_in, decay)
            state_out = Add (decayed, hidden)
        }
    >
}
"""


def build_control_flow():
    """Builds the If/Loop model from ``CONTROL_FLOW_TEXT``.

    ``then_branch`` reads the activation ``hidden_b`` and the foldable
    ``scale`` (= 2 * 3 / 2); ``else_branch`` reads the activation ``hidden``
    and the initializer ``bias``; the Loop body reads the initializer
    ``decay`` and the activation ``hidden``. ``dead``/``dead_scaled`` feed
    nothing. The Loop gets an explicit ``keep_going`` condition because
    onnx's ReferenceEvaluator treats an omitted condition as false.

    Returns:
        The ``BuiltModel``.
    """
    model = onnx.parser.parse_model(CONTROL_FLOW_TEXT)
    weight = np.random.default_rng(SEED).uniform(-1, 1, (4, 4)).astype(np.float32)
    model.graph.initializer.insert(0, onnx.numpy_helper.from_array(weight, "weight"))
    return BuiltModel(
        model,
        reference_evaluator(model),
        "hand-written in ONNX text format (`onnx.parser.parse_model`), opset 17",
    )


def build_constant_node_weights():
    """Exports ``TinyCNN`` at opset 13, then moves every weight into a Constant.

    Returns:
        The ``BuiltModel``.
    """
    module = make_module(TinyCNN)
    model = export_torchscript(
        module, torch.randn(2, 3, 8, 8), "input", "logits", {0: "batch"}, 13
    )
    graph = model.graph
    constants = [
        onnx.helper.make_node(
            "Constant", [], [init.name], name=f"Constant_{init.name}", value=init
        )
        for init in graph.initializer
    ]
    nodes = constants + list(graph.node)
    del graph.initializer[:]
    del graph.node[:]
    graph.node.extend(nodes)
    return BuiltModel(
        model,
        torch_reference(module, "input"),
        "`TinyCNN` (seeded random weights), torch.onnx.export(dynamo=False), "
        "opset 13 (BatchNorm folded by the exporter), then every initializer "
        "turned into a Constant node at the top of the graph "
        "(mimics tf2onnx / paddle2onnx output)",
    )


OPSET21_MIXED_TEXT = """
<ir_version: 10, opset_import: ["" : 21]>
opset21_mixed (float[N,3,4,4] input) => (float[N,8] output)
<float[8] bias = {0.1, -0.1, 0.2, -0.2, 0.3, -0.3, 0.4, -0.4},
 int64 index_c = {1}, int64 index_h = {2}, int64 index_w = {3},
 int64[1] axis_0 = {0}, int64[1] axis_1 = {1}, int64[1] keep_dim = {0},
 int64[3] same_shape = {0, 3, 16}>
{
    copied = Identity (input)
    dropped = Dropout (copied)
    same_type = Cast <to = 1> (dropped)
    same_layout = Transpose <perm = [0, 1, 2, 3]> (same_type)
    shape = Shape (same_layout)
    shape_i64 = Cast <to = 7> (shape)
    channels = Gather <axis = 0> (shape_i64, index_c)
    height = Gather <axis = 0> (shape_i64, index_h)
    width = Gather <axis = 0> (shape_i64, index_w)
    area = Mul (height, width)
    channels_1d = Unsqueeze (channels, axis_0)
    area_1d = Unsqueeze (area, axis_0)
    grouped_shape = Concat <axis = 0> (keep_dim, channels_1d, area_1d)
    grouped = Reshape (same_layout, grouped_shape)
    expanded = Unsqueeze (grouped, axis_1)
    squeezed = Squeeze (expanded, axis_1)
    regrouped = Reshape (squeezed, same_shape)
    features = Mul (channels, area)
    features_1d = Unsqueeze (features, axis_0)
    flat_shape = Concat <axis = 0> (keep_dim, features_1d)
    flat = Reshape (regrouped, flat_shape)
    area_f = Cast <to = 1> (area)
    normalized = Div (flat, area_f)
    projected = MatMul (normalized, weight)
    biased = Add (projected, bias)
    transposed = Transpose <perm = [1, 0]> (biased)
    restored = Transpose <perm = [1, 0]> (transposed)
    output = Relu (restored)
}
"""


def build_opset21_mixed():
    """Builds the opset-21 clean-up test model from ``OPSET21_MIXED_TEXT``.

    Identity, Dropout (inference), the float->float Cast, the identity
    Transpose, the Unsqueeze/Squeeze pair, the Reshape to ``same_shape``, the
    int64->int64 Cast and the inverse Transpose pair are all no-ops. The
    Shape->Gather->Mul->Unsqueeze->Concat chains only read static dimensions
    and fold to ``[0, 3, 16]`` and ``[0, 48]``; ``area_f`` folds to 16.0.

    Returns:
        The ``BuiltModel``.
    """
    model = onnx.parser.parse_model(OPSET21_MIXED_TEXT)
    weight = np.random.default_rng(SEED).uniform(-1, 1, (48, 8)).astype(np.float32)
    model.graph.initializer.insert(0, onnx.numpy_helper.from_array(weight, "weight"))
    return BuiltModel(
        model,
        reference_evaluator(model),
        "hand-written in ONNX text format (`onnx.parser.parse_model`), opset 21",
    )


def reference_evaluator(model):
    """Wraps ``onnx.reference.ReferenceEvaluator`` as a ``Reference``.

    Args:
        model: The model to evaluate.

    Returns:
        A function computing the model's outputs from feeds.
    """
    evaluator = ReferenceEvaluator(model)
    return lambda feeds: evaluator.run(None, feeds)


BUILDERS = {
    **{
        f"torch_cnn_opset{opset}.onnx": functools.partial(build_torch_cnn, opset)
        for opset in (12, 13, 15, 17, 18, 21)
    },
    "torch_transformer.onnx": build_torch_transformer,
    "torch_transformer_opset18.onnx": build_torch_transformer_opset18,
    "control_flow_if_loop.onnx": build_control_flow,
    "constant_node_weights.onnx": build_constant_node_weights,
    "opset21_mixed.onnx": build_opset21_mixed,
}


# --------------------------------------------------------------------------
# verification and documentation
# --------------------------------------------------------------------------


def value_signature(value):
    """Formats a graph input/output as ``name: dtype[dims]``.

    Args:
        value: An ``onnx.ValueInfoProto``.

    Returns:
        E.g. ``input: float32[batch, 3, 16, 16]``; dynamic dims are named.
    """
    tensor_type = value.type.tensor_type
    dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor_type.elem_type)
    dims = [
        dim.dim_param if dim.HasField("dim_param") else str(dim.dim_value)
        for dim in tensor_type.shape.dim
    ]
    return f"{value.name}: {dtype}[{', '.join(dims)}]"


def random_feeds(model, rng, dynamic_value):
    """Creates random inputs matching the model's declared input types.

    Float inputs are standard normal; integer inputs are token ids in
    ``[0, VOCAB_SIZE)``.

    Args:
        model: The model.
        rng: ``numpy.random.Generator``.
        dynamic_value: Size used for every dynamic dimension.

    Returns:
        Feeds for every graph input.
    """
    feeds = {}
    for value in model.graph.input:
        tensor_type = value.type.tensor_type
        dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor_type.elem_type)
        shape = [
            dim.dim_value if dim.HasField("dim_value") else dynamic_value
            for dim in tensor_type.shape.dim
        ]
        if np.issubdtype(dtype, np.integer):
            feeds[value.name] = rng.integers(0, VOCAB_SIZE, shape).astype(dtype)
        else:
            feeds[value.name] = rng.standard_normal(shape).astype(dtype)
    return feeds


def verify(path, reference):
    """Checks the saved model, runs it in onnxruntime and compares outputs.

    Args:
        path: The saved ``.onnx`` file.
        reference: Computes the expected outputs.
    """
    assert path.stat().st_size < MAX_FILE_BYTES, path
    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(SEED)
    for dynamic_value in DYNAMIC_DIM_VALUES:
        feeds = random_feeds(model, rng, dynamic_value)
        actual = session.run(None, feeds)
        expected = reference(feeds)
        assert len(actual) == len(expected) == len(model.graph.output), path
        for got, want in zip(actual, expected, strict=True):
            np.testing.assert_allclose(got, want, rtol=TOLERANCE, atol=TOLERANCE)


def readme_section(name, built):
    """Returns the README entry of one model file.

    Args:
        name: File name.
        built: The ``BuiltModel`` saved under that name.

    Returns:
        Markdown text.
    """
    model = built.model
    opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    initializers = {init.name for init in model.graph.initializer}
    ops = collections.Counter(node.op_type for node in model.graph.node)
    lines = [
        f"## `{name}`",
        "",
        f"- Produced by: {built.produced_by}.",
        f"- Opset {opset}, IR version {model.ir_version}, "
        f"{len(model.graph.node)} top-level nodes.",
        "- Ops: " + ", ".join(f"{op} {n}" for op, n in sorted(ops.items())) + ".",
    ]
    lines += [
        f"- Input `{value_signature(v)}`"
        for v in model.graph.input
        if v.name not in initializers
    ]
    lines += [f"- Output `{value_signature(v)}`" for v in model.graph.output]
    return "\n".join(lines) + "\n"


README_HEADER = """# Test models

Generated by `python models/test_models.py`; do not edit by hand. Every model
passes `onnx.checker.check_model(full_check=True)` and runs in onnxruntime
(CPUExecutionProvider), matching torch or `onnx.reference.ReferenceEvaluator`
to 1e-4. Named dimensions (`batch`, `seq`, `N`, ...) are dynamic; integer
inputs are token ids in `[0, 100)` and `seq` is at most 64. See the script's
docstring for why each model exists.

## Development zoo (`zoo/`)

Trained real architectures (detector, OCR, hybrid, pre-quantized, fixed batch, ...) built
by `python models/build_zoo.py [names...]` and registered with their metrics in
`tests/zoo_real.py` (`ZOO_MODELS`). Each `zoo/<name>.onnx` comes with `zoo/<name>.npz`, 64
calibration inputs keyed by input name with samples on axis 0 (pass it as `data=`), and
`zoo/<name>_eval.npz`, 96 held-out inputs in the same layout drawn with another seed;
quantized candidates are judged against the FP32 model on those. `zoo/README.md`
(generated by the same script) lists each model's opset, ops, size and trained accuracy.
The `yolo` and `paddle12` npz files are over 2 MB: they are built, not committed, and
their tests skip until `python models/build_zoo.py yolo paddle12` has run.
"""


def main():
    """Builds, saves and verifies every model, then writes the README."""
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    sections = [README_HEADER]
    for name, builder in BUILDERS.items():
        built = builder()
        path = OUT_DIR / name
        onnx.save(built.model, str(path))
        verify(path, built.reference)
        sections.append(readme_section(name, built))
        print(f"{name}: {path.stat().st_size} bytes, ok")
    (OUT_DIR / "README.md").write_text("\n".join(sections))


if __name__ == "__main__":
    main()
