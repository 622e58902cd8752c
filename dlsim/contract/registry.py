"""Named choices that scenario fields accept, filled by the modules that implement them.

A scenario field such as ``collective.algorithm`` names one of a family of implementations.
The contract is the bottom layer and imports none of them; instead each implementing module
registers its names at import (``register``), and the field's type (``choice``) checks the
name against the family when a scenario is validated, so a new implementation is one module
and no list elsewhere. ``import dlsim`` imports every implementing module, and any import of
a ``dlsim`` module runs it first, so the families are full before a scenario is validated.
"""

from __future__ import annotations

import difflib
from typing import Any, TypeVar

from pydantic import AfterValidator

T = TypeVar("T")

# The families scenario fields name (implemented in dlsim.network.algorithms,
# dlsim.network.protocol, dlsim.network.compression and dlsim.parallel.schedules)
ALGORITHM = "collective algorithm"
PROTOCOL = "protocol"
COMPRESSION = "compression scheme"
SCHEDULE = "pipeline schedule"

_FAMILIES: dict[str, dict[str, Any]] = {}


def register(family: str, name: str, impl: Any = None) -> Any:
    """Register ``impl`` as ``name`` of ``family`` and return it; without ``impl``, a
    decorator that registers what it decorates. A name registered twice is a bug."""
    def add(value: T) -> T:
        names = _FAMILIES.setdefault(family, {})
        if name in names:
            raise ValueError(f"{family} '{name}' is registered twice")
        names[name] = value
        return value

    return add if impl is None else add(impl)


def unregister(family: str, name: str) -> None:
    """Remove ``name`` from ``family`` (a test's temporary registration)."""
    del _FAMILIES[family][name]


def registered(family: str) -> dict[str, Any]:
    """The family's names and implementations, in registration order."""
    return dict(_FAMILIES.get(family, {}))


def did_you_mean(name: str, allowed: list[str]) -> str:
    """`` (did you mean 'x'?)`` for the closest of ``allowed`` (difflib's ratio >= 0.6), or
    nothing when none is close."""
    close = difflib.get_close_matches(name, allowed, n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


def unknown(family: str, name: str, allowed: list[str]) -> str:
    """The sentence for a name that is not among ``allowed``: a close match if there is one
    and the whole list."""
    return (f"unknown {family} '{name}'{did_you_mean(name, allowed)}; allowed: "
            f"{', '.join(allowed) if allowed else 'none registered'}")


def member_of(family: str, also: tuple[str, ...] = ()) -> AfterValidator:
    """A pydantic validator of a string field (``Annotated[str, member_of(...)]``) that
    accepts the names registered in ``family`` when the scenario is validated (not when the
    model is defined), plus the fixed names ``also`` (such as ``auto``)."""
    def check(name: str) -> str:
        allowed = [*also, *registered(family)]
        if name not in allowed:
            raise ValueError(unknown(family, name, allowed))
        return name

    return AfterValidator(check)
