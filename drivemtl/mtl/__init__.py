"""Multi-task learning methods: task granularity, loss balancing, gradient methods, diagnostics.

Public names load lazily, so ``drivemtl compare`` starts without importing torch.
"""

from importlib import import_module

_EXPORTS = {
    "TaskTerm": "drivemtl.mtl.granularity",
    "task_terms": "drivemtl.mtl.granularity",
    "Balancer": "drivemtl.mtl.balancing",
    "FixedWeights": "drivemtl.mtl.balancing",
    "UncertaintyWeighting": "drivemtl.mtl.balancing",
    "DynamicWeightAverage": "drivemtl.mtl.balancing",
    "GradNorm": "drivemtl.mtl.balancing",
    "build_balancer": "drivemtl.mtl.balancing",
    "GradientMethod": "drivemtl.mtl.gradients",
    "build_gradient_method": "drivemtl.mtl.gradients",
    "MultiTaskObjective": "drivemtl.mtl.objective",
    "TaskAffinity": "drivemtl.mtl.affinity",
    "suggest_groups": "drivemtl.mtl.affinity",
    "relative_gains": "drivemtl.mtl.compare",
}
__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'drivemtl.mtl' has no attribute {name!r}")
