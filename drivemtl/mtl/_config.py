"""Method specs from the config: ``name`` or ``{method: name, option: value, ...}``."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any

from drivemtl.errors import DriveMTLError


def parse_spec(spec: str | Mapping[str, Any] | None, option: str) -> tuple[str | None, dict]:
    """Split a method spec into its name and options.

    Args:
        spec: ``None``, a method name, or a mapping with a ``method`` key and options.
        option: The config key, for messages (``model.balancing``).
    """
    if spec is None:
        return None, {}
    if isinstance(spec, str):
        return spec.lower(), {}
    if isinstance(spec, Mapping):
        options = dict(spec)
        method = options.pop("method", None)
        if not isinstance(method, str):
            raise DriveMTLError(
                f"{option} needs a 'method' name, e.g. {{method: dwa, temperature: 2.0}}; "
                f"got {dict(spec)!r}."
            )
        return method.lower(), options
    raise DriveMTLError(f"{option} must be a method name or a mapping, got {spec!r}.")


def instantiate(
    registry: Mapping[str, Callable[..., Any]],
    method: str,
    options: Mapping[str, Any],
    option: str,
    *args: Any,
) -> Any:
    """``registry[method](*args, **options)`` with clear errors for names and options."""
    if method not in registry:
        raise DriveMTLError(
            f"Unknown {option} method {method!r}; choose one of {sorted(registry)}."
        )
    factory = registry[method]
    allowed = [
        name
        for name, p in inspect.signature(factory).parameters.items()
        if p.kind is p.KEYWORD_ONLY or (p.kind is p.POSITIONAL_OR_KEYWORD and name != "tasks")
    ]
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise DriveMTLError(
            f"{option} method {method!r} has no option {unknown}; its options are {allowed}."
        )
    try:
        return factory(*args, **options)
    except (TypeError, ValueError) as e:
        raise DriveMTLError(f"Bad {option} options for {method!r}: {e}") from None
