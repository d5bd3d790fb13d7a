"""Name -> function registries for the pluggable pieces of the RL algorithm.

Config values such as ``algorithm.estimator: grpo`` are resolved through these registries, so an
unknown name fails early with a one-line :class:`ConfigError` that lists the valid choices.
"""

from __future__ import annotations

from typing import Callable, TypeVar

from orchestrator.errors import ConfigError

F = TypeVar("F", bound=Callable)


class Registry:
    """A named collection of functions of one kind (e.g. advantage estimators).

    ``kind`` is the human-readable noun used in error messages ("advantage estimator") and
    ``field`` is the config field the name comes from ("algorithm.estimator").
    """

    def __init__(self, kind: str, field: str) -> None:
        self.kind = kind
        self.field = field
        self._entries: dict[str, Callable] = {}

    def register(self, name: str) -> Callable[[F], F]:
        """Decorator that registers the decorated function under ``name``.

        Registering the same name twice raises ``ValueError`` (a programming error).
        """

        def decorator(fn: F) -> F:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._entries[name] = fn
            return fn

        return decorator

    def get(self, name: str) -> Callable:
        """Return the function registered as ``name``; unknown names raise :class:`ConfigError`."""
        try:
            return self._entries[name]
        except (KeyError, TypeError):
            choices = ", ".join(self.names())
            raise ConfigError(
                f"{self.field}={name!r} is not a valid {self.kind}; choose one of: {choices}"
            ) from None

    def names(self) -> list[str]:
        """Sorted list of registered names."""
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        try:
            return name in self._entries
        except TypeError:  # unhashable values are never registered names
            return False

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {self.field!r}, names={self.names()})"


ADVANTAGE_ESTIMATORS = Registry("advantage estimator", "algorithm.estimator")
KL_ESTIMATORS = Registry("KL estimator", "algorithm.kl_estimator")
POLICY_LOSSES = Registry("policy loss", "algorithm.policy_loss")
