"""The solver registry: ``name -> (class, default fields, label)``.

The command line, ``scire-jax compare``, the benchmarks and the README's solver table read this
registry; a new solver is its module plus one :func:`register` line at the bottom of this file.

Solvers are named by short specs, ``NAME[:FIELD=VALUE,...]`` (:func:`solver_from_spec`)::

    scire                          SciRE v1 multistep order 3, NSR grid (the default sampler)
    scire:method=singlestep_fixed,order=2,phi=1
    dpm                            DPM-Solver++ multistep order 3, logSNR grid
    dpm:algorithm=dpmsolver,order=2
    unipc:order=2,variant=bh1
    deis:order=2

Example:
    >>> from scire_jax.core.solvers import registry
    >>> registry.solver_from_spec("dpm:order=2", steps=10).label()
    'DPM++ 2M'
"""

from __future__ import annotations

import dataclasses
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Type

from scire_jax.core.solvers.base import Solver
from scire_jax.core.solvers.deis import DEIS
from scire_jax.core.solvers.dpm import DPMSolver
from scire_jax.core.solvers.heun import EDMHeun
from scire_jax.core.solvers.scire import SciRE
from scire_jax.core.solvers.unipc import UniPC

__all__ = ["SolverEntry", "REGISTRY", "register", "solver_names", "get_solver", "make_solver", "solver_fields",
           "solver_from_spec", "markdown_table"]


@dataclasses.dataclass(frozen=True)
class SolverEntry:
    """A registered solver: its class, the fields its name fixes or defaults, and a display name.

    ``fixed`` fields are part of the name (``dpmsolver`` fixes ``algorithm``); a spec may repeat
    them but not contradict them.  ``defaults`` may be overridden.
    """

    name: str
    cls: Type[Solver]
    defaults: Mapping[str, Any]
    fixed: Mapping[str, Any]
    label: str
    description: str = ""
    fields: Optional[Tuple[str, ...]] = None  # the fields a spec may set (None: every non-reserved field)

    def make(self, steps: int, **fields) -> Solver:
        for key, value in self.fixed.items():
            if key in fields and fields[key] != value:
                raise ValueError(f"solver {self.name!r}: {key}={fields[key]!r} contradicts the name "
                                 f"(it fixes {key}={value!r})")
        return self.cls(steps=steps, **{**self.defaults, **fields, **self.fixed})


REGISTRY: Dict[str, SolverEntry] = {}

# fields a spec may not set: the NFE budget comes from the caller, callables cannot be typed in
RESERVED_FIELDS = ("steps", "times", "thresholding", "correct_xt")


def register(name: str, cls: Type[Solver], defaults: Optional[Mapping[str, Any]] = None, label: str = "",
             description: str = "", fixed: Optional[Mapping[str, Any]] = None, fields: Optional[Sequence[str]] = None
             ) -> SolverEntry:
    """Add ``name`` to :data:`REGISTRY` with its default and fixed fields."""
    if not (isinstance(cls, type) and issubclass(cls, Solver)):
        raise ValueError(f"register({name!r}, {cls!r}): the class must derive from scire_jax.core.solvers.base.Solver")
    entry = SolverEntry(name, cls, dict(defaults or {}), dict(fixed or {}), label or cls.__name__, description,
                        None if fields is None else tuple(fields))
    REGISTRY[name] = entry
    return entry


def solver_names() -> List[str]:
    """Registered names, in registration order."""
    return list(REGISTRY)


def get_solver(name: str) -> SolverEntry:
    """The registry entry of ``name`` (ValueError listing the names otherwise)."""
    if name not in REGISTRY:
        raise ValueError(f"solver {name!r} is not allowed: the name must be one of {', '.join(REGISTRY)}")
    return REGISTRY[name]


def solver_fields(name: str) -> List[str]:
    """The fields a spec of solver ``name`` may set (the dataclass fields, reserved ones excluded)."""
    entry = get_solver(name)
    if entry.fields is not None:
        return list(entry.fields)
    return [f.name for f in dataclasses.fields(entry.cls) if f.name not in RESERVED_FIELDS]


def make_solver(name: str, steps: int, **fields) -> Solver:
    """``get_solver(name).make(steps, **fields)``: the registered defaults, then ``fields``."""
    return get_solver(name).make(steps, **fields)


def _parse_value(text: str):
    lowered = text.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered in ("none", "null"):
        return None
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def parse_spec(spec: str) -> Tuple[str, Dict[str, Any]]:
    """``"NAME:FIELD=VALUE,..."`` -> ``(name, fields)``, validated against the registry."""
    name, _, fields_text = spec.partition(":")
    name = name.strip().lower()
    allowed = solver_fields(name)
    fields: Dict[str, Any] = {}
    for item in filter(None, (part.strip() for part in fields_text.split(","))):
        key, equals, value = item.partition("=")
        key = key.strip().replace("-", "_")
        if not equals:
            raise ValueError(f"solver {spec!r}: field {item!r} is not allowed: write FIELD=VALUE")
        if key not in allowed:
            raise ValueError(f"solver {spec!r}: field {key!r} is not allowed for {name}; allowed: {', '.join(allowed)}")
        fields[key] = _parse_value(value.strip())
    return name, fields


def markdown_table() -> str:
    """The registry as the README's markdown table (name, class, fixed and default fields, description)."""
    rows = ["| name | class | fixed fields | default fields | description |", "|---|---|---|---|---|"]
    for entry in REGISTRY.values():
        fixed = ", ".join(f"`{k}={v!r}`" for k, v in entry.fixed.items()) or "-"
        defaults = ", ".join(f"`{k}={v!r}`" for k, v in entry.defaults.items()) or "-"
        rows.append(f"| `{entry.name}` | `sj.{entry.cls.__name__}` | {fixed} | {defaults} | {entry.description} |")
    return "\n".join(rows)


def solver_from_spec(spec: str, steps: int) -> Solver:
    """Build a solver from ``NAME[:FIELD=VALUE,...]`` with ``steps`` steps (the NFE budget).

    Args:
      spec: e.g. ``"scire"``, ``"scire:order=2,phi=1"``, ``"dpm:algorithm=dpmsolver"``; names are
        those of :data:`REGISTRY`, fields those of the solver's class (``steps``, ``times`` and the
        callables excluded).  Values are parsed as int, float, bool or ``none`` where they can be,
        else kept as strings.
      steps: number of steps (the NFE budget; see the solver for its exact NFE).

    Raises:
      ValueError: unknown name, malformed field, a field the solver does not have or a bad value.
    """
    name, fields = parse_spec(spec)
    if get_solver(name).cls is DPMSolver and fields.get("method") == "singlestep_agile":
        fields["method"] = "singlestep"
    try:
        return make_solver(name, steps, **fields)
    except (TypeError, ValueError) as error:
        raise ValueError(f"solver {spec!r}: {error}") from None


# -- the registered solvers (a new solver: one line here) ----------------------------------------------
register("scire", SciRE, {}, "SciRE", "SciRE-Solver v1/v2, multistep or singlestep, orders 1-3 (default: v1 3M, NSR)")
register("dpm", DPMSolver, {"algorithm": "dpmsolver++", "order": 3}, "DPM-Solver++",
         "DPM-Solver++ / DPM-Solver, multistep or singlestep, orders 1-3 (default: ++ 3M, logSNR)")
register("dpmsolver", DPMSolver, {"order": 3}, "DPM-Solver", "DPM-Solver (noise prediction), default 3M",
         fixed={"algorithm": "dpmsolver"})
register("dpmsolver++", DPMSolver, {"order": 3}, "DPM-Solver++", "DPM-Solver++ (data prediction), default 3M",
         fixed={"algorithm": "dpmsolver++"})
register("unipc", UniPC, {"order": 3}, "UniPC", "UniPC predictor-corrector bh1/bh2 (default: bh2, order 3, logSNR)")
register("ddim", SciRE, {"skip_type": "time_uniform"}, "DDIM", "DDIM (eta = 0), time-uniform grid",
         fixed={"algorithm": "v1", "method": "multistep", "order": 1},
         fields=("skip_type", "t_start", "t_end", "denoise_to_zero", "nsr_shift"))
register("deis", DEIS, {"order": 3}, "DEIS", "DEIS multistep, logrho (as diffusers), orders 1-3 (default: 3, logSNR)")
register("heun", EDMHeun, {}, "EDM-Heun", fixed={"order": 2},
         description="EDM's deterministic Heun sampler (S_churn = 0): N steps, NFE = 2N - 1, karras grid")
