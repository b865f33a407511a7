"""`CalibrationTable`: the activation range of each calibrated tensor, keyed by tensor name.

The table is what calibrate hands to the quantizers (through ``Context.calibration``) and what
users keep between runs. Each entry is a float ``(min, max)`` clipping range plus, optionally,
the observer's summary (values seen, observed extrema, histogram size). Symmetric quantizers
use ``amax = max(|min|, |max|)`` and the int8 scale ``amax / 127``.

Two file forms:

- JSON (``save`` / ``load``), a lossless round trip: Python floats are written with ``repr``,
  which reads back to the same double, and NaN/inf are refused so the file is standard JSON::

      {"format": "onnxpress-calibration", "version": 1, "method": "entropy",
       "options": {...}, "tensors": {"x": {"min": -1.5, "max": 2.25, "summary": {...}}}}

- TensorRT's calibration cache (``to_tensorrt_cache`` / ``from_tensorrt_cache``), the text
  file ``trtexec --calib=`` and ``IInt8Calibrator.readCalibrationCache`` accept: a header
  ``TRT-<version>-EntropyCalibration2`` then one ``<tensor>: <scale>`` line per tensor, the
  scale ``amax / 127`` as the hex of its big-endian float32. TensorRT ranges are symmetric, so
  the cache keeps ``amax`` only.

Names key the table, so a pass that renames or replaces a calibrated tensor after calibrate
invalidates its entry; a missing entry raises an error that says so.
"""

from __future__ import annotations

import difflib
import json
import math
import os
import re
import struct
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from onnxpress.errors import OnnxpressError

FORMAT = "onnxpress-calibration"
VERSION = 1

#: Largest int8 magnitude of symmetric quantization: scale = amax / INT8_MAX.
INT8_MAX = 127

#: TensorRT version written in a cache header by default (NV_TENSORRT_VERSION of 8.6.1).
TENSORRT_VERSION = 8601

#: A zero range still needs a positive scale in TensorRT: the smallest normal float32.
MIN_SCALE = 2.0**-126

_HEADER = re.compile(r"TRT-(\d+)-(\w+)")


class CalibrationError(OnnxpressError):
    """A calibration table is malformed, unreadable, or lacks a tensor."""


class MissingRangeError(CalibrationError, KeyError):
    """The table has no range for a tensor (a `KeyError`, so ``dict``-style code works)."""

    def __str__(self) -> str:
        """The message itself: KeyError would print its repr, quotes and escapes included."""
        return str(self.args[0])


@dataclass(frozen=True)
class TensorRange:
    """The range of one tensor.

    Attributes:
        min: Lower end of the clipping range.
        max: Upper end.
        summary: What the observer saw (count, observed min/max, bins…), if recorded.
    """

    min: float
    max: float
    summary: Mapping[str, Any] | None = None

    def __post_init__(self) -> None:
        """Store plain floats; refuse NaN, inf and inverted ranges."""
        lo, hi = float(self.min), float(self.max)
        if not (math.isfinite(lo) and math.isfinite(hi)) or lo > hi:
            raise CalibrationError(f"invalid range ({self.min}, {self.max}): it must be finite "
                                   "with min <= max")
        object.__setattr__(self, "min", lo)
        object.__setattr__(self, "max", hi)

    def __iter__(self) -> Iterator[float]:
        """Unpacks as ``lo, hi = table[name]``."""
        return iter((self.min, self.max))

    @property
    def amax(self) -> float:
        """``max(|min|, |max|)``: the bound of the symmetric range."""
        return max(-self.min, self.max)

    def to_dict(self) -> dict[str, Any]:
        """The JSON form of the entry."""
        entry: dict[str, Any] = {"min": self.min, "max": self.max}
        if self.summary is not None:
            entry["summary"] = dict(self.summary)
        return entry


@dataclass(frozen=True)
class CalibrationTable:
    """Per-tensor activation ranges from one calibration run.

    Attributes:
        method: How the ranges were chosen ("minmax", "percentile", "entropy", "mse", …).
        ranges: Tensor name → `TensorRange` (a ``(min, max)`` pair is converted).
        options: The calibration options (percentile, bins, …), for the record.
    """

    method: str
    ranges: Mapping[str, TensorRange]
    options: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        """Convert ``(min, max)`` pairs to `TensorRange` and copy the mappings."""
        object.__setattr__(self, "ranges", {
            name: r if isinstance(r, TensorRange) else TensorRange(*r)
            for name, r in self.ranges.items()})
        object.__setattr__(self, "options", dict(self.options))

    # ----------------------------------------------------------------------------------------
    # Mapping access
    def __getitem__(self, name: str) -> TensorRange:
        """The range of tensor `name`.

        Raises:
            MissingRangeError: the table has no such tensor; the message says what to do.
        """
        try:
            return self.ranges[name]
        except KeyError:
            close = difflib.get_close_matches(name, list(self.ranges), n=3)
            hint = f" (similar names in the table: {', '.join(close)})" if close else ""
            raise MissingRangeError(
                f"tensor '{name}' has no calibrated range: the table holds {len(self)} tensors "
                f"from method '{self.method}'{hint}. Re-run calibrate on this model (passes "
                "that rename or replace tensors after calibrate invalidate the table, so run "
                "fusions before calibrate), or list the tensor in Calibrate(tensors=...)"
            ) from None

    def __contains__(self, name: object) -> bool:
        """Whether the table has a range for tensor `name`."""
        return name in self.ranges

    def __len__(self) -> int:
        """Number of tensors."""
        return len(self.ranges)

    def __iter__(self) -> Iterator[str]:
        """Tensor names, in calibration order."""
        return iter(self.ranges)

    # ----------------------------------------------------------------------------------------
    # JSON
    def to_dict(self) -> dict[str, Any]:
        """The JSON document of the table."""
        return {"format": FORMAT, "version": VERSION, "method": self.method,
                "options": dict(self.options),
                "tensors": {name: r.to_dict() for name, r in self.ranges.items()}}

    @classmethod
    def from_dict(cls, document: Mapping[str, Any], origin: str = "the document"
                  ) -> CalibrationTable:
        """A table from its JSON document.

        Raises:
            CalibrationError: not a calibration table of a known version, or malformed.
        """
        if not isinstance(document, Mapping) or document.get("format") != FORMAT:
            raise CalibrationError(f"{origin}: not an onnxpress calibration table (no "
                                   f"\"format\": \"{FORMAT}\")")
        if document.get("version") != VERSION:
            raise CalibrationError(f"{origin}: calibration table version "
                                   f"{document.get('version')!r}, this onnxpress reads "
                                   f"version {VERSION}; re-run calibrate")
        try:
            ranges = {name: TensorRange(entry["min"], entry["max"], entry.get("summary"))
                      for name, entry in document["tensors"].items()}
            return cls(document["method"], ranges, document.get("options", {}))
        except (KeyError, TypeError, ValueError, AttributeError, CalibrationError) as e:
            raise CalibrationError(f"{origin}: malformed calibration table "
                                   f"({type(e).__name__}: {e})") from None

    def save(self, path: str | os.PathLike) -> Path:
        """Write the table as JSON, atomically; returns the path."""
        return _write_atomic(Path(path), json.dumps(self.to_dict(), indent=1, allow_nan=False))

    @classmethod
    def read(cls, path: str | os.PathLike) -> CalibrationTable:
        """A table from either file form: onnxpress JSON, or a TensorRT calibration cache
        (recognized by its ``TRT-`` header)."""
        path = Path(path)
        try:
            head = path.read_bytes()[:4]
        except OSError as e:
            raise CalibrationError(f"{path}: cannot read the calibration table ({e})") from None
        return cls.from_tensorrt_cache(path) if head == b"TRT-" else cls.load(path)

    @classmethod
    def load(cls, path: str | os.PathLike) -> CalibrationTable:
        """Read a table written by `save`.

        Raises:
            CalibrationError: missing file, invalid JSON or not a calibration table.
        """
        return cls.from_dict(_parse_json(Path(path)), str(path))

    # ----------------------------------------------------------------------------------------
    # TensorRT
    def to_tensorrt_cache(self, path: str | os.PathLike, version: int = TENSORRT_VERSION
                          ) -> Path:
        """Write TensorRT's calibration cache (symmetric: ``amax`` only); returns the path.

        Args:
            path: The cache file to write.
            version: NV_TENSORRT_VERSION of the TensorRT that will read it (8601 for 8.6.1).

        Raises:
            CalibrationError: a tensor name contains a line break.
        """
        lines = [f"TRT-{int(version)}-EntropyCalibration2"]
        for name, r in self.ranges.items():
            if "\n" in name or "\r" in name:
                raise CalibrationError(f"tensor name {name!r} has a line break; a TensorRT "
                                       "cache cannot hold it")
            scale = max(r.amax / INT8_MAX, MIN_SCALE)
            lines.append(f"{name}: {struct.pack('>f', scale).hex()}")
        return _write_atomic(Path(path), "\n".join(lines) + "\n")

    @classmethod
    def from_tensorrt_cache(cls, path: str | os.PathLike) -> CalibrationTable:
        """Read a TensorRT calibration cache as symmetric ranges ``(-127·s, 127·s)``.

        Raises:
            CalibrationError: missing file or not a TensorRT calibration cache.
        """
        path = Path(path)
        if not path.is_file():
            raise CalibrationError(f"{path}: no such file")
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
        header = _HEADER.fullmatch(lines[0].strip()) if lines else None
        if header is None:
            raise CalibrationError(f"{path}: not a TensorRT calibration cache (the first line "
                                   "should be TRT-<version>-<algorithm>)")
        ranges = {}
        for number, line in enumerate(lines[1:], start=2):
            if not line.strip():
                continue
            # Names may contain ": " (TensorFlow-style "x:0"); the scale never does.
            name, _, hexed = line.rpartition(": ")
            try:
                (scale,) = struct.unpack(">f", bytes.fromhex(hexed.strip()))
                ranges[name] = TensorRange(-scale * INT8_MAX, scale * INT8_MAX)
            except (ValueError, struct.error, CalibrationError):
                raise CalibrationError(f"{path}:{number}: expected '<tensor>: <8 hex digits of "
                                       f"a finite scale>', got {line!r}") from None
        return cls(f"tensorrt-cache ({header.group(2)})", ranges,
                   {"version": int(header.group(1))})


def _parse_json(path: Path) -> Any:
    if not path.is_file():
        raise CalibrationError(f"{path}: no such file; write one with Calibrate(save=...) or "
                               "CalibrationTable.save")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CalibrationError(f"{path}: not a calibration table (invalid JSON: {e})") from None


def _write_atomic(path: Path, text: str) -> Path:
    """Write `text` through a temporary file in the same folder, so a crash leaves no half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path
