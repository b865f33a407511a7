"""Synthetic data sets for the development zoo (numpy only, seeded, no download).

* `text_lines`: 32x128 grey "text lines" of 3-6 digits drawn with scikit-learn's digits
  glyphs (8x8, upsampled to 16x16), jittered in position and spacing, with noise; the labels
  are the digit strings (for CTC training and exact-match evaluation).
* `rectangles`: 3-channel images with 1-3 filled axis-aligned rectangles in one of three
  colours on a noisy grey background; the labels are boxes (x1, y1, x2, y2) and classes.
* `text_pages`: 3-channel images with 1-3 short digit strings at random places; the label
  is the text-region mask a DB-style detector predicts.
* `byte_sequences`: random bytes with one of four 4-byte motifs planted at a random place;
  the label is which motif (a rule a byte-level CNN can learn).
* `digit_images`: the digits upsampled to 32x32, optionally tinted into 3 channels.
"""

from __future__ import annotations

import functools

import numpy as np
from sklearn.datasets import load_digits

GLYPH = 16  # glyph side in pixels after upsampling
LINE_H, LINE_W = 32, 128
MOTIFS = np.array([[7, 200, 13, 99], [250, 1, 250, 1], [65, 66, 67, 68], [0, 0, 255, 128]],
                  np.int64)
COLOURS = np.array([[0.9, 0.15, 0.1], [0.1, 0.8, 0.2], [0.15, 0.25, 0.95]], np.float32)


@functools.cache
def _glyphs() -> tuple[np.ndarray, np.ndarray]:
    """Digit glyphs in [0, 1], upsampled 8x8 -> 16x16, and their labels."""
    d = load_digits()
    images = np.kron(d.images / 16.0, np.ones((2, 2))).astype(np.float32)
    return images, d.target.astype(np.int64)


def _draw_string(canvas: np.ndarray, rng: np.random.Generator, length: int, x: int, y: int
                 ) -> tuple[list[int], int]:
    """Draw `length` random digits at (x, y) on a 2-D canvas; return labels and end x."""
    images, labels = _glyphs()
    out = []
    for _ in range(length):
        i = rng.integers(len(images))
        h, w = canvas.shape
        if x + GLYPH > w:
            break
        canvas[y:y + GLYPH, x:x + GLYPH] = np.maximum(canvas[y:y + GLYPH, x:x + GLYPH], images[i])
        out.append(int(labels[i]))
        x += GLYPH - 2 + int(rng.integers(0, 4))
    return out, x


def text_lines(n: int, seed: int, min_len: int = 3, max_len: int = 6
               ) -> tuple[np.ndarray, list[list[int]]]:
    """`n` images float32 [n, 1, 32, 128] in [0, 1] and their digit strings."""
    rng = np.random.default_rng(seed)
    x = np.zeros((n, 1, LINE_H, LINE_W), np.float32)
    labels = []
    for k in range(n):
        length = int(rng.integers(min_len, max_len + 1))
        y0 = int(rng.integers(2, LINE_H - GLYPH - 2))
        s, _ = _draw_string(x[k, 0], rng, length, int(rng.integers(0, 12)), y0)
        labels.append(s)
    x += rng.normal(0, 0.05, x.shape).astype(np.float32)
    return np.clip(x, 0, 1), labels


def rectangles(n: int, seed: int, size: int = 128
               ) -> tuple[np.ndarray, list[np.ndarray], list[np.ndarray]]:
    """`n` images [n, 3, size, size], boxes (k, 4) xyxy in pixels and classes (k,)."""
    rng = np.random.default_rng(seed)
    x = np.empty((n, 3, size, size), np.float32)
    boxes, classes = [], []
    for k in range(n):
        x[k] = rng.uniform(0.3, 0.6)
        count = int(rng.integers(1, 4))
        b, c = [], []
        for _ in range(count):
            w, h = rng.integers(12, size // 2, 2)
            x1, y1 = rng.integers(0, size - w), rng.integers(0, size - h)
            cls = int(rng.integers(0, len(COLOURS)))
            x[k, :, y1:y1 + h, x1:x1 + w] = COLOURS[cls][:, None, None]
            b.append([x1, y1, x1 + w, y1 + h])
            c.append(cls)
        boxes.append(np.array(b, np.float32))
        classes.append(np.array(c, np.int64))
    x += rng.normal(0, 0.04, x.shape).astype(np.float32)
    return np.clip(x, 0, 1), boxes, classes


def text_pages(n: int, seed: int, size: int = 96) -> tuple[np.ndarray, np.ndarray]:
    """`n` images [n, 3, size, size] with 1-3 digit strings and masks [n, 1, size, size]."""
    rng = np.random.default_rng(seed)
    x = np.empty((n, 3, size, size), np.float32)
    masks = np.zeros((n, 1, size, size), np.float32)
    for k in range(n):
        ink = np.zeros((size, size), np.float32)
        for _ in range(int(rng.integers(1, 4))):
            x0 = int(rng.integers(0, size - 3 * GLYPH))
            y0 = int(rng.integers(0, size - GLYPH))
            if masks[k, 0, y0:y0 + GLYPH, x0:x0 + 3 * GLYPH].any():
                continue
            s, x1 = _draw_string(ink, rng, int(rng.integers(2, 6)), x0, y0)
            masks[k, 0, y0 + 3:y0 + GLYPH - 3, x0 + 2:x1 - 2] = 1.0
        background = rng.uniform(0.5, 0.9, 3).astype(np.float32)
        x[k] = background[:, None, None] * (1 - ink)
    x += rng.normal(0, 0.04, x.shape).astype(np.float32)
    return np.clip(x, 0, 1), masks


def byte_sequences(n: int, seed: int, length: int = 96) -> tuple[np.ndarray, np.ndarray]:
    """`n` int64 byte sequences [n, length] with one motif planted, and the motif index."""
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, (n, length)).astype(np.int64)
    y = rng.integers(0, len(MOTIFS), n).astype(np.int64)
    for k in range(n):
        at = int(rng.integers(0, length - MOTIFS.shape[1]))
        x[k, at:at + MOTIFS.shape[1]] = MOTIFS[y[k]]
    return x, y


def digit_images(n: int, seed: int, colour: bool) -> tuple[np.ndarray, np.ndarray]:
    """`n` digits [n, 1 or 3, 32, 32] (8x8 upsampled x4, shifted, tinted) and labels."""
    rng = np.random.default_rng(seed)
    images, labels = _glyphs()
    idx = rng.integers(0, len(images), n)
    x = np.zeros((n, 3 if colour else 1, 32, 32), np.float32)
    for k, i in enumerate(idx):
        g = np.kron(images[i], np.ones((2, 2), np.float32))
        tint = rng.uniform(0.4, 1.0, x.shape[1]).astype(np.float32)
        x[k] = tint[:, None, None] * g[None]
        if colour:
            x[k] += rng.uniform(0, 0.3, 3).astype(np.float32)[:, None, None] * (1 - g[None])
    x += rng.normal(0, 0.05, x.shape).astype(np.float32)
    return np.clip(x, 0, 1), labels[idx]
