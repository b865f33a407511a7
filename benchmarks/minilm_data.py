"""all-MiniLM-L6-v2 as the benchmarks feed it: the model file, its sentences, their feeds.

``models/minilm.py`` exports the model and picks the sentences into ``models/build/``
(gitignored); `load` builds them on first use and gives what the benchmark scripts read. The
package must not depend on that script; the benchmarks may.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from common import ROOT

MINILM_SCRIPT = ROOT / "models" / "minilm.py"


@dataclass(frozen=True)
class MiniLM:
    """The exported model and its sentences.

    Attributes:
        path: ``models/build/minilm.onnx``.
        calibration: The 256 "calibration" sentences.
        evaluation: The 256 "evaluation" sentences.
        tokenize: ``models/minilm.tokenize``: sentences → the model's feeds, padded to the
            longest sentence.
    """

    path: Path
    calibration: list[str]
    evaluation: list[str]
    tokenize: Callable[[list[str]], dict[str, np.ndarray]]

    def feeds(self, sentences: list[str], batch: int = 32) -> list[dict[str, np.ndarray]]:
        """`sentences` tokenized in consecutive batches, each padded to its longest sentence."""
        return [self.tokenize(sentences[i:i + batch]) for i in range(0, len(sentences), batch)]


def load() -> MiniLM:
    """The model and sentences, built by ``models/minilm.py`` first if either is missing.

    The build (a minute or two, once) runs in a subprocess, so the memory of the export (a
    torch model, sentence-transformers' reference embeddings) is not held by the process that
    then times sessions.
    """
    spec = importlib.util.spec_from_file_location("minilm_build", MINILM_SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not (module.MODEL_PATH.exists() and module.SENTENCES_PATH.exists()):
        print(f"building {module.MODEL_PATH} (once; takes a minute or two) ...",
              file=sys.stderr, flush=True)
        subprocess.run([sys.executable, str(MINILM_SCRIPT)], check=True, cwd=ROOT)
    sentences = json.loads(module.SENTENCES_PATH.read_text(encoding="utf-8"))
    return MiniLM(module.MODEL_PATH, sentences["calibration"], sentences["evaluation"],
                  module.tokenize)


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine similarity of two [n, d] embedding arrays, computed in float64."""
    a, b = a.astype(np.float64), b.astype(np.float64)
    return np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
