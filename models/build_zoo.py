"""Train, export and check the development zoo: ``python models/build_zoo.py [names...]``.

Every model of ``tests/zoo_real.py``'s `ZOO_MODELS` is built here from the architectures in
``zoo_models.py`` and the synthetic data of ``zoo_data.py``: a seeded, single-thread,
short training run (tens of seconds each on one core) so activations are those of a trained
network, then ``torch.onnx.export(dynamo=False)`` at the model's opset (11-17 across the
zoo), ``onnx.checker.check_model(full_check=True)``, and onnxruntime against torch on the
evaluation inputs (rtol = atol = 1e-4). Per model, files written to ``tests/models/zoo/``:

* ``<name>.onnx``: the model;
* ``<name>.npz``: 64 calibration inputs keyed by input name, axis 0 = samples;
* ``<name>_eval.npz``: 96 held-out inputs (different seed), same layout;
* ``<name>.json``: opset, op histogram, size and the trained accuracy on the held-out set.

Post-export rewrites make the "old export" shapes: ``paddle12`` has every initializer turned
into a ``Constant`` node (paddle2onnx/tf2onnx style); ``prequant`` is passed through
``onnxruntime.quantization.quantize_dynamic`` (ConvInteger, DynamicQuantizeLSTM,
MatMulInteger), so the checked reference for it is its own FP32 export.
"""

from __future__ import annotations

import collections
import io
import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnx.helper
import onnxruntime as ort
import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import zoo_data  # noqa: E402
import zoo_models as zm  # noqa: E402
from zoo_real import ZOO_DIR, ZOO_MODELS, box_f1, ctc_greedy, decode_yolo, map_iou  # noqa: E402

SEED = 0
N_CALIB, N_EVAL = 64, 96
TOLERANCE = 1e-4
MAX_FILE_BYTES = 2 * 1024 * 1024


@dataclass
class Built:
    """What a builder hands to the exporter."""

    module: nn.Module
    inputs: dict[str, np.ndarray]  # name -> calibration array (samples on axis 0)
    evals: dict[str, np.ndarray]
    outputs: list[str]
    opset: int
    accuracy: dict[str, float]
    dynamic_batch: bool = True
    #: The exporter's constant folding (folds BatchNorm into Conv and the LSTM weight
    #: Slice/Concat reordering into initializers, as a shipped model would have).
    fold: bool = False


def _seed() -> None:
    torch.manual_seed(SEED)
    np.random.seed(SEED)


def fit(module: nn.Module, n: int, batch: Callable[[np.ndarray], tuple], loss: Callable,
        steps: int, lr: float = 3e-3, batch_size: int = 32) -> float:
    """Adam over random minibatches of indices into a training set of `n`; last loss."""
    rng = np.random.default_rng(SEED)
    opt = torch.optim.Adam(module.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, lr, total_steps=steps)
    module.train()
    value = float("nan")
    for _ in range(steps):
        x, y = batch(rng.integers(0, n, batch_size))
        out = loss(module(x), y)
        opt.zero_grad()
        out.backward()
        opt.step()
        sched.step()
        value = float(out.detach())
    module.eval()
    return value


def _run(module: nn.Module, x: np.ndarray, batch: int = 32) -> np.ndarray:
    with torch.no_grad():
        return np.concatenate([module(torch.from_numpy(x[i:i + batch])).numpy()
                               for i in range(0, len(x), batch)])


# --------------------------------------------------------------------------------------------
# Builders
def _frame_loss(log_softmax: bool):
    """Cross-entropy against the frame alignment (converges far faster than CTC loss)."""
    def loss(out, frames):
        lp = out if log_softmax else F.log_softmax(out, -1)
        return F.nll_loss(lp.reshape(-1, lp.shape[-1]), frames.reshape(-1))
    return loss


def _ocr(module: nn.Module, log_softmax: bool, steps: int, opset: int, output: str) -> Built:
    x, _, frames = zoo_data.text_lines(2048, SEED)
    fit(module, len(x), lambda i: (torch.from_numpy(x[i]), torch.from_numpy(frames[i])),
        _frame_loss(log_softmax), steps)
    ev, ev_labels, _ = zoo_data.text_lines(N_EVAL, SEED + 1)
    pred = ctc_greedy(_run(module, ev))
    acc = float(np.mean([tuple(p) == tuple(t) for p, t in zip(pred, ev_labels, strict=True)]))
    return Built(module, {"image": x[:N_CALIB]}, {"image": ev}, [output], opset,
                 {"exact_match": acc})


def build_hybrid() -> Built:
    """Conv stem + transformer text recognizer, opset 16."""
    return _ocr(zm.ConvTransformerOCR(), False, 200, 16, "logits")


def build_crnn() -> Built:
    """CRNN with a bidirectional LSTM, opset 11."""
    return _ocr(zm.CRNN(), True, 200, 11, "log_probs")


def build_prequant() -> Built:
    """A CRNN-lite exported folded at opset 12, then quantize_dynamic (see `_prequantize`).

    Folding matters: quantize_dynamic only quantizes an LSTM whose weights are initializers.
    """
    built = _ocr(zm.CRNN(hidden=32, widths=(16, 24, 32)), True, 200, 12, "log_probs")
    built.fold = True
    return built


def build_mobilenet() -> Built:
    """MobileNetV3 on tinted 32x32 digits, opset 14 (HardSwish op)."""
    x, y = zoo_data.digit_images(3000, SEED, colour=True)
    module = zm.MobileNetV3()
    fit(module, len(x), lambda i: (torch.from_numpy(x[i]), torch.from_numpy(y[i])),
        F.cross_entropy, 400)
    ev, ev_y = zoo_data.digit_images(N_EVAL, SEED + 1, colour=True)
    acc = float(np.mean(_run(module, ev).argmax(1) == ev_y))
    return Built(module, {"image": x[:N_CALIB]}, {"image": ev}, ["logits"], 14, {"top1": acc})


def build_fixedbatch() -> Built:
    """ResNet-ish CNN on 1x32x32 digits, exported with every dim static (batch 1), opset 15."""
    x, y = zoo_data.digit_images(3000, SEED, colour=False)
    module = zm.ResNetLite()
    fit(module, len(x), lambda i: (torch.from_numpy(x[i]), torch.from_numpy(y[i])),
        F.cross_entropy, 300)
    ev, ev_y = zoo_data.digit_images(N_EVAL, SEED + 1, colour=False)
    acc = float(np.mean(_run(module, ev).argmax(1) == ev_y))
    return Built(module, {"image": x[:N_CALIB]}, {"image": ev}, ["logits"], 15, {"top1": acc},
                 dynamic_batch=False)


def build_bytes() -> Built:
    """Byte-motif classifier with OneHot, ReduceSum LayerNorm, tanh GELU; opset 13."""
    x, y = zoo_data.byte_sequences(4000, SEED)
    module = zm.ByteCNN()
    fit(module, len(x), lambda i: (torch.from_numpy(x[i]), torch.from_numpy(y[i])),
        F.cross_entropy, 400)
    ev, ev_y = zoo_data.byte_sequences(N_EVAL, SEED + 1)
    acc = float(np.mean(_run(module, ev).argmax(1) == ev_y))
    return Built(module, {"bytes": x[:N_CALIB]}, {"bytes": ev}, ["logits"], 13, {"top1": acc})


def build_paddle12() -> Built:
    """DB text detector on synthetic digit pages, opset 12 (Constant weights after export)."""
    x, masks = zoo_data.text_pages(1024, SEED)
    module = zm.DBNet()
    fit(module, len(x), lambda i: (torch.from_numpy(x[i]), torch.from_numpy(masks[i])),
        F.binary_cross_entropy, 300)
    ev, ev_masks = zoo_data.text_pages(N_EVAL, SEED + 1)
    iou = map_iou(ev_masks, _run(module, ev))
    return Built(module, {"image": x[:N_CALIB]}, {"image": ev}, ["maps"], 12,
                 {"mask_iou": iou})


def _yolo_targets(module: zm.YoloV8, boxes: list[np.ndarray], classes: list[np.ndarray]
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per image and anchor: class one-hot, ltrb distances in stride units, positive mask.

    An object is assigned to one level by its longer side (<= 32 px: stride 8, <= 64: 16,
    else 32) and to that level's anchors inside the box within 2.5 strides of its centre
    (the nearest one if none); a contested anchor goes to the smaller box.
    """
    pts = (module.anchors * module.strides).numpy().T  # [N, 2] pixels
    st = module.strides.numpy()[0]
    n, nc = len(pts), module.nc
    cls_t = np.zeros((len(boxes), n, nc), np.float32)
    box_t = np.zeros((len(boxes), n, 4), np.float32)
    pos = np.zeros((len(boxes), n), bool)
    for k, (bb, cc) in enumerate(zip(boxes, classes, strict=True)):
        area = np.full(n, np.inf)
        for b, c in zip(bb, cc, strict=True):
            side = max(b[2] - b[0], b[3] - b[1])
            level = 8 if side <= 32 else 16 if side <= 64 else 32
            centre = (b[:2] + b[2:]) / 2
            on = st == level
            inside = on & np.all((pts > b[:2]) & (pts < b[2:]), 1)
            inside &= np.all(np.abs(pts - centre) < 2.5 * st[:, None], 1)
            if not inside.any():
                inside = on & (np.abs(pts - centre).sum(1) == np.abs(pts - centre)[on].sum(1).min())
            a = (b[2] - b[0]) * (b[3] - b[1])
            take = inside & (a < area)
            area[take] = a
            cls_t[k, take] = 0
            cls_t[k, take, c] = 1
            ltrb = np.concatenate((pts - b[:2], b[2:] - pts), 1) / st[:, None]
            box_t[k, take] = np.clip(ltrb[take], 0, module.REG_MAX - 1.01)
            pos[k, take] = True
    return cls_t, box_t, pos


def build_yolo() -> Built:
    """YOLOv8-style detector on synthetic coloured rectangles (128x128), opset 17."""
    module = zm.YoloV8(nc=len(zoo_data.COLOURS), size=128)
    x, boxes, classes = zoo_data.rectangles(768, SEED)
    cls_t, box_t, pos = (torch.from_numpy(a) for a in _yolo_targets(module, boxes, classes))
    r = module.REG_MAX

    def loss(raw, idx):
        dist, logit = raw[:, :4 * r].reshape(raw.shape[0], 4, r, -1), raw[:, 4 * r:]
        p = pos[idx]
        npos = max(int(p.sum()), 1)
        l_cls = F.binary_cross_entropy_with_logits(logit.transpose(1, 2), cls_t[idx],
                                                   reduction="sum") / npos
        d = dist.permute(0, 3, 1, 2)[p]  # [P, 4, r]
        t = box_t[idx][p]  # [P, 4]
        lo = t.floor().long()
        wl = lo + 1 - t
        logp = F.log_softmax(d, -1)
        l_dfl = -(logp.gather(-1, lo[..., None])[..., 0] * wl
                  + logp.gather(-1, (lo + 1)[..., None])[..., 0] * (1 - wl)).mean()
        return l_cls + l_dfl

    class Raw(nn.Module):
        def __init__(self):
            super().__init__()
            self.m = module

        def forward(self, xb):
            return self.m.raw(xb)

    fit(Raw(), len(x), lambda i: (torch.from_numpy(x[i]), torch.from_numpy(i)), loss, 150,
        lr=5e-3, batch_size=16)
    module.eval()
    ev, ev_boxes, ev_classes = zoo_data.rectangles(N_EVAL, SEED + 1)
    f1 = box_f1(list(zip(ev_boxes, ev_classes, strict=True)), decode_yolo(_run(module, ev)))
    return Built(module, {"images": x[:N_CALIB]}, {"images": ev}, ["output0"], 17,
                 {"f1_vs_truth": f1})


BUILDERS: dict[str, Callable[[], Built]] = {
    "yolo": build_yolo, "mobilenet": build_mobilenet, "bytes": build_bytes,
    "paddle12": build_paddle12, "hybrid": build_hybrid, "crnn": build_crnn,
    "prequant": build_prequant, "fixedbatch": build_fixedbatch,
}


# --------------------------------------------------------------------------------------------
# Export and post-processing
def export(built: Built) -> onnx.ModelProto:
    """torch.onnx.export (TorchScript exporter) at the built opset."""
    names = list(built.inputs)
    sample = tuple(torch.from_numpy(built.inputs[n][:1]) for n in names)
    dynamic = ({n: {0: "batch"} for n in names + built.outputs} if built.dynamic_batch
               else None)
    buf = io.BytesIO()
    torch.onnx.export(built.module, sample, buf, input_names=names,
                      output_names=built.outputs, opset_version=built.opset,
                      dynamic_axes=dynamic, dynamo=False, do_constant_folding=built.fold)
    return onnx.load_from_string(buf.getvalue())


def initializers_to_constants(model: onnx.ModelProto) -> None:
    """Move every initializer into a Constant node at the top of the graph."""
    g = model.graph
    nodes = [onnx.helper.make_node("Constant", [], [t.name], value=t, name=f"const_{t.name}")
             for t in g.initializer]
    names = {t.name for t in g.initializer}
    keep = [i for i in g.input if i.name not in names]
    del g.input[:]
    g.input.extend(keep)
    del g.initializer[:]
    body = list(g.node)
    del g.node[:]
    g.node.extend(nodes + body)


def _prequantize(model: onnx.ModelProto) -> onnx.ModelProto:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    tmp = ZOO_DIR / "_prequant_fp32.onnx"
    out = ZOO_DIR / "_prequant_int8.onnx"
    onnx.save(model, tmp)
    try:
        quantize_dynamic(tmp, out, op_types_to_quantize=["Conv", "LSTM", "MatMul"],
                         weight_type=QuantType.QInt8)
        return onnx.load(out)
    finally:
        tmp.unlink(missing_ok=True)
        out.unlink(missing_ok=True)


def _ort(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(model.SerializeToString(), opts,
                                providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


def _eval_outputs(model: onnx.ModelProto, evals: dict[str, np.ndarray], fixed: bool
                  ) -> np.ndarray:
    if not fixed:
        return _ort(model, evals)[0]
    n = len(next(iter(evals.values())))
    return np.concatenate([_ort(model, {k: v[i:i + 1] for k, v in evals.items()})[0]
                           for i in range(n)])


def build(name: str) -> dict:
    """Build, export, check and write one zoo model; returns its summary."""
    _seed()
    start = time.perf_counter()
    built = BUILDERS[name]()
    train_s = time.perf_counter() - start
    model = export(built)
    onnx.checker.check_model(model, full_check=True)
    (x,) = built.evals.values()
    want = _run(built.module, x, batch=1 if not built.dynamic_batch else 32)
    got = _eval_outputs(model, built.evals, not built.dynamic_batch)
    err = float(np.abs(got - want).max())
    # Relative as well: the detector's boxes are pixels (up to 128), float32 rounding 1e-5.
    if not np.allclose(got, want, rtol=TOLERANCE, atol=TOLERANCE):
        raise AssertionError(f"{name}: onnxruntime differs from torch by {err}")
    if name == "paddle12":
        initializers_to_constants(model)
        onnx.checker.check_model(model, full_check=True)
        err = max(err, float(np.abs(_eval_outputs(model, built.evals, False) - want).max()))
    if name == "prequant":
        model = _prequantize(model)
        onnx.checker.check_model(model)
        q = _eval_outputs(model, built.evals, False)
        built.accuracy["exact_match_vs_fp32_after_quantize_dynamic"] = float(
            np.mean([a == b for a, b in zip(ctc_greedy(want), ctc_greedy(q), strict=True)]))
    ZOO_DIR.mkdir(parents=True, exist_ok=True)
    path = ZOO_DIR / f"{name}.onnx"
    onnx.save(model, path)
    # Noisy float images do not compress: keep the committed files under 2 MB by storing
    # only as many samples as fit (the training above used all of them).
    for suffix, arrays in (("", built.inputs), ("_eval", built.evals)):
        per_sample = sum(a[:1].nbytes for a in arrays.values())
        keep = max(1, min(len(next(iter(arrays.values()))), MAX_FILE_BYTES // per_sample))
        np.savez_compressed(ZOO_DIR / f"{name}{suffix}.npz",
                            **{k: v[:keep] for k, v in arrays.items()})
    size = path.stat().st_size
    if size > MAX_FILE_BYTES:
        raise AssertionError(f"{name}: {size} bytes > {MAX_FILE_BYTES}")
    ops = collections.Counter(n.op_type for n in model.graph.node)
    summary = {"opset": max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")),
               "bytes": size, "nodes": len(model.graph.node), "ops": dict(sorted(ops.items())),
               "accuracy": built.accuracy, "max_abs_err_vs_torch": err,
               "train_seconds": round(train_s, 1)}
    (ZOO_DIR / f"{name}.json").write_text(json.dumps(summary, indent=1) + "\n")
    return summary


def write_readme() -> None:
    """Regenerate ``tests/models/zoo/README.md`` from the models' JSON summaries."""
    lines = ["# Development zoo", "",
             "Generated by `python models/build_zoo.py`; do not edit by hand. Files per model:",
             "`<name>.onnx`, `<name>.npz` (calibration inputs, samples on axis 0),",
             "`<name>_eval.npz` (held-out inputs), `<name>.json` (this summary). Accuracy is",
             "measured with torch on the held-out inputs against their labels.", ""]
    for name, entry in ZOO_MODELS.items():
        path = ZOO_DIR / f"{name}.json"
        if not path.is_file():
            continue
        s = json.loads(path.read_text())
        ops = ", ".join(f"{k} {v}" for k, v in s["ops"].items())
        acc = ", ".join(f"{k} {v:.3f}" for k, v in s["accuracy"].items())
        lines += [f"## `{name}`", "", f"- {entry.description}.",
                  f"- Opset {s['opset']}, {s['bytes']} bytes, {s['nodes']} nodes; "
                  f"outputs {entry.outputs}.", f"- Trained accuracy: {acc}.", f"- Ops: {ops}.", ""]
    (ZOO_DIR / "README.md").write_text("\n".join(lines))


def main(names: list[str]) -> None:
    """Build the named models (all when none are given)."""
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    for name in names or list(BUILDERS):
        s = build(name)
        print(f"{name}: opset {s['opset']}, {s['bytes']} B, {s['nodes']} nodes, "
              f"{s['accuracy']}, err {s['max_abs_err_vs_torch']:.2e}, "
              f"train {s['train_seconds']} s", flush=True)
        write_readme()


if __name__ == "__main__":
    main(sys.argv[1:])
