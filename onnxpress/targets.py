"""Targets: the backend a model is compiled for, and what it runs fast.

A `Target` names the onnxruntime execution providers that run the model and the package that
provides them. Quantization placement rules (which ops get Q/DQ on which inputs, dtypes,
symmetry) belong here too, as op tables, so that passes never hard-code a backend's rules.
"""

from __future__ import annotations

from dataclasses import dataclass

from onnxpress.errors import TargetError


@dataclass(frozen=True)
class Target:
    """A backend: its name, its onnxruntime providers (in priority order) and their package.

    Attributes:
        name: "cpu", "cuda" or "tensorrt".
        providers: onnxruntime execution providers, most preferred first.
        package: The pip package that ships `providers[0]`, named in errors.
    """

    name: str
    providers: tuple[str, ...]
    package: str

    def check_available(self) -> None:
        """Raise `TargetError` naming the package to install if the provider is missing."""
        import onnxruntime as ort

        available = ort.get_available_providers()
        if self.providers[0] not in available:
            raise TargetError(
                f"target '{self.name}' needs onnxruntime's {self.providers[0]}, which this "
                f"installation lacks (available: {', '.join(available)}); install "
                f"'{self.package}' instead of 'onnxruntime'")


TARGETS = {
    "cpu": Target("cpu", ("CPUExecutionProvider",), "onnxruntime"),
    "cuda": Target("cuda", ("CUDAExecutionProvider", "CPUExecutionProvider"), "onnxruntime-gpu"),
    "tensorrt": Target("tensorrt", ("TensorrtExecutionProvider", "CUDAExecutionProvider",
                                    "CPUExecutionProvider"), "onnxruntime-gpu (with TensorRT)"),
}


def get_target(target: Target | str) -> Target:
    """A `Target` from an object or its name.

    Raises:
        TargetError: for an unknown name, listing the known ones.
    """
    if isinstance(target, Target):
        return target
    try:
        return TARGETS[target]
    except KeyError:
        raise TargetError(f"unknown target '{target}'; known targets: {', '.join(TARGETS)}"
                          ) from None
