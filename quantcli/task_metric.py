"""A task metric from the user's own code: ``--metric FILE.py:FUNCTION`` for ``convert --max-drop`` and ``analyze``.

Without it, the drop a budget bounds is top-1 accuracy (labels) or agreement with FP32 on the first output, which
says little about a detector's boxes, a segmentation mask or an embedding.  The function is called once per
candidate model::

    def f1(reference, candidate, labels):  # -> float: a percentage, higher is better
        ...

``reference`` and ``candidate`` hold the FP32 model's and the candidate's outputs: a list with one entry per
evaluation batch, each a list of that batch's output arrays in the model's output order (samples along axis 0);
``labels`` is the evaluation labels (numpy array) or None.  The drop is ``f(reference, reference, labels) -
f(reference, candidate, labels)``: with labels, accuracy points below FP32's; without, points of agreement.
"""

from __future__ import annotations

import hashlib
import importlib.util
import math
import sys
from pathlib import Path
from typing import Callable

import numpy as np

from .errors import QuantcliError

Outputs = list[list[np.ndarray]]


class TaskMetric:
    """A loaded ``FILE.py:FUNCTION``; calling it checks what the user's function returns."""

    def __init__(self, spec: str, fn: Callable, sha256: str) -> None:
        self.spec, self.fn, self.sha256 = spec, fn, sha256

    @property
    def name(self) -> str:
        return self.spec

    def __call__(self, reference: Outputs, candidate: Outputs, labels: np.ndarray | None) -> float:
        try:
            value = self.fn(reference, candidate, labels)
        except Exception as e:  # the user's code: one line naming it, not a traceback
            raise QuantcliError(f"--metric {self.spec}: raised {type(e).__name__}: {e}") from e
        try:
            value = float(value)
        except (TypeError, ValueError):
            raise QuantcliError(f"--metric {self.spec}: returned {type(value).__name__}, expected a number "
                                "(a percentage, higher is better)") from None
        if not math.isfinite(value):
            raise QuantcliError(f"--metric {self.spec}: returned {value}, expected a finite percentage")
        return value


def parse_spec(spec: str) -> tuple[Path, str]:
    """``FILE.py:FUNCTION`` -> (path, function name), or a clear error."""
    path, sep, func = spec.rpartition(":")
    if not sep or not path or not func.isidentifier():
        raise QuantcliError(f"--metric {spec}: expected FILE.py:FUNCTION, e.g. --metric metrics.py:detection_f1")
    return Path(path), func


def load_task_metric(spec: str) -> TaskMetric:
    """Import ``FILE.py`` (as its own module, not on sys.path) and return its ``FUNCTION`` as a TaskMetric."""
    path, func = parse_spec(spec)
    if not path.is_file():
        raise QuantcliError(f"{path}: no such file (--metric {spec})")
    source = path.read_bytes()
    name = "quantcli_task_metric_" + hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:12]
    module_spec = importlib.util.spec_from_file_location(name, path)
    if module_spec is None or module_spec.loader is None:
        raise QuantcliError(f"{path}: not a Python file (--metric {spec})")
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[name] = module  # dataclasses and pickling look a module up by name
    try:
        module_spec.loader.exec_module(module)
    except Exception as e:
        sys.modules.pop(name, None)
        raise QuantcliError(f"{path}: importing it failed: {type(e).__name__}: {e}") from e
    fn = getattr(module, func, None)
    if not callable(fn):
        found = sorted(k for k, v in vars(module).items() if callable(v) and not k.startswith("_")
                       and getattr(v, "__module__", None) == name)
        raise QuantcliError(f"{path}: no function {func!r}" + (f" (it defines: {', '.join(found)})" if found else ""))
    return TaskMetric(spec, fn, hashlib.sha256(source).hexdigest())
