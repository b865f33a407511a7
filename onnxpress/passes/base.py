"""The pass protocol: `Pass`, `PassResult`, `Context` and the registry.

A pass is a frozen dataclass whose fields are its options. Defining a subclass with a `name`
registers it under that name (the key used by the CLI, reports and saved metadata), so adding a
pass is one module and one test file. A pass mutates the model in place; `optimize` copies the
user's model once beforehand.

Contract: a pass with nothing to do returns ``PassResult(changed=False)``; a pass that cannot
run raises (`PreconditionError` from `requires`) with the reason. Nothing is skipped silently.
"""

from __future__ import annotations

import ast
import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from onnxpress.errors import PassError
from onnxpress.progress import Progress, no_progress

if TYPE_CHECKING:
    from onnxpress.ir.model import Model
    from onnxpress.passes.calibrate.table import CalibrationTable
    from onnxpress.passes.manager import PassManager
    from onnxpress.report import PassRecord
    from onnxpress.runtime.data import DataSource
    from onnxpress.targets import Target

_REGISTRY: dict[str, type[Pass]] = {}


@dataclass(frozen=True)
class PassResult:
    """What a pass did: whether the model changed, and pass-specific counters."""

    changed: bool
    stats: Mapping[str, Any] = field(default_factory=dict)


@dataclass
class Context:
    """What passes share during one pipeline run; nothing is global.

    Attributes:
        target: The backend the model is compiled for.
        data: Sample inputs (calibration, reconstruction, numeric verification).
        calibration: Activation ranges, written by calibrate and read by the quantizers.
        reference: The untouched input model: the teacher and the numeric reference. Read it
            with `teacher()`, which loads it on first use from `reference_loader`.
        reference_loader: Builds `reference` when first needed (`optimize` re-loads the
            user's input, which is never modified), so a pipeline that needs no teacher never
            holds a second copy of a large model.
        progress: ``progress(description, total)`` returns an ``advance(n=1)`` callback; the
            CLI draws rich progress bars with it (`onnxpress.progress`).
        manager: The `PassManager` running the pipeline; `run` hands nested passes to it.
    """

    target: Target
    data: DataSource | None = None
    calibration: CalibrationTable | None = None
    reference: Model | None = None
    progress: Progress = no_progress
    reference_loader: Callable[[], Model] | None = None
    manager: PassManager | None = None

    def run(self, p: Pass, model: Model) -> PassRecord:
        """Run `p` on `model` through the pipeline's one entry point (requires, run,
        invalidate, verify, record, instruments), nested under the pass that calls this.

        Composite passes and searches run their inner passes this way, never with `run()`
        directly. Outside a pipeline (a pass's `run` called by hand) a manager that only
        checks structure is made for the purpose.
        """
        if self.manager is None:
            from onnxpress.passes.manager import PassManager

            self.manager = PassManager([])
        return self.manager.run_one(p, model, self)

    def teacher(self) -> Model | None:
        """The untouched input model (loaded once, on first use), or None if there is none."""
        if self.reference is None and self.reference_loader is not None:
            self.reference = self.reference_loader()
        return self.reference


class Pass:
    """One transformation of a model. Subclasses are frozen dataclasses; fields are options.

    Class attributes:
        name: Registry key ("fuse-batchnorm"); set it to register the subclass.
        exact: Whether the pass preserves outputs within float tolerance.
        preserves: Analyses (functions) still valid after the pass changes the model.
        rtol, atol: Tolerance of numeric verification for an exact pass.
        composite: Every change the pass makes is made by the passes it runs through
            `Context.run` on the same model, each verified on its own (`passes.sequence`).
    """

    name: ClassVar[str]
    exact: ClassVar[bool] = True
    preserves: ClassVar[frozenset] = frozenset()
    composite: ClassVar[bool] = False
    rtol: ClassVar[float] = 1e-4
    atol: ClassVar[float] = 1e-5

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "name" in cls.__dict__:
            if cls.name in _REGISTRY and _qualified(_REGISTRY[cls.name]) != _qualified(cls):
                raise TypeError(f"pass name '{cls.name}' is taken by {_REGISTRY[cls.name]}")
            _REGISTRY[cls.name] = cls

    def requires(self, model: Model, ctx: Context) -> None:
        """Raise `PreconditionError` with what to do if the pass cannot run yet."""

    def run(self, model: Model, ctx: Context) -> PassResult:
        """Transform `model` in place."""
        raise NotImplementedError(f"pass '{self.name}' does not implement run()")

    def options(self) -> dict[str, Any]:
        """The pass's options (its dataclass fields), for reports and metadata."""
        if dataclasses.is_dataclass(self):
            return {f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self)}
        return {}


def _qualified(cls: type) -> str:
    """Module and class name: a re-import of the same class may re-register, nothing else."""
    return f"{cls.__module__}.{cls.__qualname__}"


def _plain(value: Any) -> Any:
    """A JSON-friendly form of an option value."""
    if isinstance(value, Pass):
        return value.name
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    return repr(value)


def get(name: str) -> type[Pass]:
    """The pass class registered under `name`.

    Raises:
        PassError: naming the unknown pass and listing the known ones.
    """
    _import_builtin_passes()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise PassError(f"unknown pass '{name}'; known passes: {', '.join(sorted(_REGISTRY))}"
                        ) from None


def registered() -> dict[str, type[Pass]]:
    """All registered passes by name (built-in ones imported first)."""
    _import_builtin_passes()
    return dict(sorted(_REGISTRY.items()))


def resolve(spec: Pass | str) -> Pass:
    """A pass object from an object, a registry name, or a name with options.

    Options follow the name, separated by colons — ``"prune-magnitude:sparsity=0.3:scope=layer"``
    — so that command lines can set them; values are Python literals (numbers, booleans,
    tuples) or else plain strings.

    Raises:
        PassError: the name is unknown, or an option is not a field of the pass.
    """
    if isinstance(spec, Pass):
        return spec
    if not isinstance(spec, str):
        raise PassError(f"not a pass: {spec!r}; give a Pass object or a registered name")
    name, *settings = [part.strip() for part in spec.split(":")]
    cls = get(name)
    options = {}
    for setting in settings:
        key, sep, text = setting.partition("=")
        if not sep:
            raise PassError(f"pass '{name}': option '{setting}' is not key=value")
        options[key.strip()] = _literal(text.strip())
    _check_option_types(cls, name, options)
    try:
        return cls(**options)
    except TypeError as e:
        fields = [f.name for f in dataclasses.fields(cls)] if dataclasses.is_dataclass(cls) else []
        raise PassError(f"pass '{name}': {e}; its options are {fields}") from None


def _check_option_types(cls: type[Pass], name: str, options: dict[str, Any]) -> None:
    """Raise `PassError` when a value's kind differs from its field's default's.

    Command-line values that are not literals arrive as strings; without this, `sparsity=abc`
    would fail deep in the pass with Python's comparison error.
    """
    if not dataclasses.is_dataclass(cls):
        return
    for f in dataclasses.fields(cls):
        if f.name not in options:
            continue
        default = (f.default if f.default is not dataclasses.MISSING else f.default_factory()
                   if f.default_factory is not dataclasses.MISSING else None)
        value = options[f.name]
        if isinstance(default, bool):
            ok, expected = isinstance(value, bool), "True or False"
        elif isinstance(default, int | float):
            ok, expected = isinstance(value, int | float) and not isinstance(value, bool), \
                "a number"
        elif isinstance(default, tuple | list | frozenset):
            ok, expected = isinstance(value, tuple | list | str), "a list, e.g. ('a', 'b')"
        else:
            continue
        if not ok:
            raise PassError(f"pass '{name}': option '{f.name}' expected {expected}, got "
                            f"{value!r}")


def _literal(text: str) -> Any:
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def _import_builtin_passes() -> None:
    import onnxpress.passes  # noqa: F401  (importing registers the built-in passes)
