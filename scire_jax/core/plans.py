"""The plan / executor architecture shared by every solver.

A solver is compiled in two stages (docs/design.md, "Plans"):

1. **Plan** (host, numpy float64, no tracing). Every x-independent quantity -- the time of every
   network evaluation, ``alpha`` and ``sigma`` there, and the linear coefficients that combine the
   state, the current step's stage outputs and the history of earlier outputs -- is computed once
   into plain arrays.  A solver only writes its plan (a list of :class:`Step`), grouped here into
   :class:`Segment` s of identical structure.
2. **Execute** (device). One ``jax.lax.scan`` per segment consumes the coefficient rows. The body
   has no schedule math and no branching on traced values; it calls the network exactly
   ``num_stages`` (+1 with a post-evaluation) times per step, so a solve makes exactly ``plan.nfe``
   network calls.

One step of the executor, for a state ``x`` and a history ``h[0..H-1]`` (``h[H-1]`` newest) of model
outputs ``F`` (noise or data predictions):

    x_k   = a_k x + sum_{j<k} c_kj F_j + sum_m d_km h_m          (stage inputs, k = 0..S-1)
    F_k   = F(x_k, tau_k)                                          (S network calls)
    x'    = a x + sum_k b_k F_k + sum_m e_m h_m                    (the update)
    x'    = correct_xt(x', t', step)                               (optional user corrector)
    F_post = F(x', t')                                             (optional post-evaluation)
    h     = push(h, F_0 or F_post)                                 (optional history push)

Multistep solvers use a post-evaluation (F at the new point becomes history), singlestep solvers
use S stages and no history, UniPC pushes its stage-0 output (the model at the predicted point).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["Combination", "Step", "SegmentStructure", "Segment", "Plan", "build_plan_from_steps",
           "build_plan_from_arrays", "stack_plans",
           "stacking_key", "paddable_segment", "execute_plan"]

MODEL_KINDS = ("noise", "data")


@dataclasses.dataclass
class Combination:
    """A host-side linear combination ``state * x + sum stages[k] F_k + sum history[m] h[-m-1]``.

    ``history`` maps *age* (1 = newest history entry, 2 = the one before, ...) to a coefficient.
    """

    state: float = 0.0
    stages: Dict[int, float] = dataclasses.field(default_factory=dict)
    history: Dict[int, float] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class Step:
    """One solver step as written by a solver's plan function (host side).

    Attributes:
      stage_times: times of the S stage evaluations.
      stage_alphas / stage_sigmas: schedule coefficients at those times.
      stage_inputs: a :class:`Combination` per stage (stage k may use stages j < k).
      output: the update as a :class:`Combination`.
      time: time of the state after the step.
      post_evaluation: ``(alpha, sigma)`` at ``time`` if the model is evaluated at the new state.
      push: ``None``, ``"stage0"`` or ``"post"``: which output enters the history.
      kind: ``"noise"`` or ``"data"``: the model quantity F.
      order: nominal order of the step (for display).
      phi: phi coefficient of the step (NaN where none; for display).
      record: whether the new state is a trajectory point.
      initial: the step only evaluates the model at ``t_start`` (multistep start-up); its recorded
        output *is* the initial trajectory point, so ``x_T`` is not prepended.
    """

    stage_times: List[float]
    stage_alphas: List[float]
    stage_sigmas: List[float]
    stage_inputs: List[Combination]
    output: Combination
    time: float
    post_evaluation: Optional[Tuple[float, float]] = None
    push: Optional[str] = None
    kind: str = "noise"
    order: int = 1
    phi: float = float("nan")
    record: bool = True
    initial: bool = False

    @property
    def structure(self):
        return (len(self.stage_times), self.post_evaluation is not None, self.push, self.kind, self.record)



class SegmentStructure(NamedTuple):
    """The static part of a segment (the pytree's auxiliary data): shapes, kinds and nonzero masks."""

    num_stages: int
    post_evaluation: bool
    push: Optional[str]
    kind: str
    record: bool
    length: int
    masks: Tuple[Tuple[str, Any], ...]

    @property
    def mask(self) -> Dict[str, Any]:
        return dict(self.masks)

    @property
    def nfe(self) -> int:
        return self.length * (self.num_stages + int(self.post_evaluation))


#: coefficient arrays the executor reads (the others, ``order`` and ``phi``, are for display)
EXECUTED = ("stage_time", "stage_alpha", "stage_sigma", "stage_state", "stage_stage", "stage_history",
            "out_state", "out_stage", "out_history", "time", "post_alpha", "post_sigma", "step_index")


@jax.tree_util.register_pytree_node_class
class Segment:
    """A run of steps with the same structure, consumed by one ``lax.scan``.

    A pytree: ``arrays`` (leading axis = the steps of the segment) are the leaves, ``structure``
    (:class:`SegmentStructure`) is static.  Arrays: ``stage_time / stage_alpha / stage_sigma``
    ``(L, S)``; ``stage_state (L, S)``, ``stage_stage (L, S, S)``, ``stage_history (L, S, H)``;
    ``out_state (L,)``, ``out_stage (L, S)``, ``out_history (L, H)``; ``time``, ``post_alpha``,
    ``post_sigma``, ``step_index``, ``order``, ``phi`` ``(L,)``.
    """

    def __init__(self, structure: SegmentStructure, arrays: Dict[str, Any]):
        self.structure = structure
        self.arrays = arrays

    def tree_flatten(self):
        names = tuple(sorted(self.arrays))
        return tuple(self.arrays[name] for name in names), (self.structure, names)

    @classmethod
    def tree_unflatten(cls, aux, leaves):
        structure, names = aux
        return cls(structure, dict(zip(names, leaves)))

    num_stages = property(lambda self: self.structure.num_stages)
    post_evaluation = property(lambda self: self.structure.post_evaluation)
    push = property(lambda self: self.structure.push)
    kind = property(lambda self: self.structure.kind)
    record = property(lambda self: self.structure.record)
    length = property(lambda self: self.structure.length)
    nfe = property(lambda self: self.structure.nfe)
    masks = property(lambda self: self.structure.mask)

    def __repr__(self):
        s = self.structure
        return f"Segment(length={s.length}, stages={s.num_stages}, post={s.post_evaluation}, kind={s.kind!r})"


@jax.tree_util.register_pytree_node_class
class Plan:
    """Everything x-independent about a solve, computed on the host in float64.

    A pytree: the coefficient arrays of the segments (and ``t_start``, ``t_end``) are leaves, the
    structure (segment shapes, history size, masks) is static, so ``jax.jit(execute_plan)`` takes a
    plan as an argument and ``jax.vmap`` maps over plans stacked by :func:`stack_plans`.

    Attributes:
      segments: the scan segments in order.
      history_size: length H of the history buffer.
      initial: the first step is a multistep start-up evaluation (its output is the first
        trajectory point, so ``x_T`` is not prepended).
      t_start, t_end: integration interval.
      solver: the configuration that produced the plan (host-side only: ``None`` after a transform).
      nfe: exact number of network evaluations of a solve.
      times / orders / phi: time, nominal order and phi (NaN where none) of each step.
      evaluation_times: every network evaluation time, in call order.
    """

    def __init__(self, segments, history_size: int, initial: bool, t_start, t_end, solver=None):
        self.segments = tuple(segments)
        self.history_size = int(history_size)
        self.initial = bool(initial)
        self.t_start = t_start
        self.t_end = t_end
        self.solver = solver

    def tree_flatten(self):
        return (self.segments, self.t_start, self.t_end), (self.history_size, self.initial)

    @classmethod
    def tree_unflatten(cls, aux, children):
        segments, t_start, t_end = children
        return cls(segments, aux[0], aux[1], t_start, t_end)

    @property
    def structure(self) -> tuple:
        """The static structure: plans with equal structure stack (:func:`stack_plans`)."""
        return jax.tree_util.tree_structure(self)

    @property
    def nfe(self) -> int:
        return int(sum(segment.nfe for segment in self.segments))

    @property
    def num_steps(self) -> int:
        return int(sum(segment.length for segment in self.segments))

    def _concat(self, name) -> np.ndarray:
        return np.concatenate([np.asarray(segment.arrays[name]) for segment in self.segments])

    @property
    def times(self) -> np.ndarray:
        return self._concat("time")

    @property
    def orders(self) -> np.ndarray:
        return self._concat("order").astype(int)

    @property
    def phi(self) -> np.ndarray:
        return self._concat("phi")

    @property
    def evaluation_times(self) -> np.ndarray:
        parts = []
        for segment in self.segments:
            times = np.asarray(segment.arrays["stage_time"])
            if segment.post_evaluation:
                times = np.concatenate([times, np.asarray(segment.arrays["time"])[:, None]], axis=1)
            parts.append(times.reshape(-1))
        return np.concatenate(parts)

    @property
    def trajectory_times(self) -> np.ndarray:
        """Times of the entries of ``solve(..., return_trajectory=True)``."""
        recorded = [np.asarray(s.arrays["time"]) for s in self.segments if s.record]
        prefix = [] if self.initial else [np.array([float(self.t_start)])]
        return np.concatenate(prefix + recorded)

    def summary(self) -> str:
        """A human-readable table of the steps (time, order, phi, network calls)."""
        name = type(self.solver).__name__ if self.solver is not None else "plan"
        lines = [f"{name}: {self.num_steps} steps, NFE = {self.nfe}, "
                 f"t: {float(self.t_start):.6g} -> {float(self.t_end):.6g}",
                 f"{'step':>4} {'t':>12} {'order':>5} {'phi':>10} {'calls':>5} {'kind':>5}"]
        index = 0
        for segment in self.segments:
            calls = segment.num_stages + int(segment.post_evaluation)
            for time, order, phi in zip(np.asarray(segment.arrays["time"]), np.asarray(segment.arrays["order"]),
                                        np.asarray(segment.arrays["phi"])):
                lines.append(f"{index:>4} {time:>12.6g} {int(order):>5} {phi:>10.6f} {calls:>5} {segment.kind:>5}")
                index += 1
        return "\n".join(lines)

    def __repr__(self):
        return (f"Plan(solver={self.solver!r}, steps={self.num_steps}, nfe={self.nfe}, "
                f"segments={[(s.length, s.num_stages, s.post_evaluation) for s in self.segments]})")


def _masks(arrays: Dict[str, np.ndarray], num_stages: int, axes=(0,)) -> Tuple[Tuple[str, Any], ...]:
    """Static masks of the coefficients that are nonzero somewhere (zero terms are not traced)."""
    def nonzero(value) -> np.ndarray:
        return np.asarray(np.any(value != 0, axis=axes))

    stage_stage = nonzero(arrays["stage_stage"])  # (S, S)
    stage_history = nonzero(arrays["stage_history"])  # (S, H)
    return (
        ("stage_stage", tuple(tuple(bool(v) for v in stage_stage[k]) for k in range(num_stages))),
        ("stage_history", tuple(tuple(bool(v) for v in stage_history[k]) for k in range(num_stages))),
        ("stage_state", tuple(bool(v) for v in nonzero(arrays["stage_state"]))),
        ("stage_state_is_one", tuple(bool(v) for v in np.asarray(np.all(arrays["stage_state"] == 1, axis=axes)))),
        ("out_stage", tuple(bool(v) for v in nonzero(arrays["out_stage"]))),
        ("out_history", tuple(bool(v) for v in nonzero(arrays["out_history"]))),
        ("out_state", bool(np.any(arrays["out_state"] != 0))),
    )


def build_plan_from_steps(steps: Sequence[Step], t_start: float, t_end: float, solver=None) -> Plan:
    """Group host-side steps into segments of identical structure and stack their coefficients."""
    if not steps:
        raise ValueError("a plan needs at least one step")
    history_size = 0
    for step in steps:
        for combination in list(step.stage_inputs) + [step.output]:
            if combination.history:
                history_size = max(history_size, max(combination.history))
        if step.kind not in MODEL_KINDS:
            raise ValueError(f"step kind {step.kind!r} not in {MODEL_KINDS}")
    if history_size and not any(step.push for step in steps):
        raise ValueError("a plan reads history but never pushes any")
    if any(step.push for step in steps):
        history_size = max(history_size, 1)

    groups: List[List[Step]] = []
    for step in steps:
        if groups and groups[-1][0].structure == step.structure:
            groups[-1].append(step)
        else:
            groups.append([step])

    segments = []
    index = 0
    for group in groups:
        num_stages = len(group[0].stage_times)
        n = len(group)
        arrays = {
            "stage_time": np.zeros((n, num_stages)),
            "stage_alpha": np.ones((n, num_stages)),
            "stage_sigma": np.ones((n, num_stages)),
            "stage_state": np.zeros((n, num_stages)),
            "stage_stage": np.zeros((n, num_stages, num_stages)),
            "stage_history": np.zeros((n, num_stages, history_size)),
            "out_state": np.zeros((n,)),
            "out_stage": np.zeros((n, num_stages)),
            "out_history": np.zeros((n, history_size)),
            "time": np.zeros((n,)),
            "post_alpha": np.ones((n,)),
            "post_sigma": np.ones((n,)),
            "step_index": np.arange(index, index + n, dtype=np.int32),
            "order": np.array([step.order for step in group], dtype=np.float64),
            "phi": np.array([step.phi for step in group], dtype=np.float64),
        }
        index += n
        for row, step in enumerate(group):
            arrays["stage_time"][row] = step.stage_times
            arrays["stage_alpha"][row] = step.stage_alphas
            arrays["stage_sigma"][row] = step.stage_sigmas
            for k, combination in enumerate(step.stage_inputs):
                arrays["stage_state"][row, k] = combination.state
                for j, value in combination.stages.items():
                    if j >= k:
                        raise ValueError("a stage input may only use earlier stages")
                    arrays["stage_stage"][row, k, j] = value
                for age, value in combination.history.items():
                    arrays["stage_history"][row, k, history_size - age] = value
            arrays["out_state"][row] = step.output.state
            for j, value in step.output.stages.items():
                arrays["out_stage"][row, j] = value
            for age, value in step.output.history.items():
                arrays["out_history"][row, history_size - age] = value
            arrays["time"][row] = step.time
            if step.post_evaluation is not None:
                arrays["post_alpha"][row], arrays["post_sigma"][row] = step.post_evaluation
        for name in EXECUTED:
            if name != "step_index" and not np.all(np.isfinite(arrays[name])):
                raise ValueError(
                    f"the plan has non-finite coefficients ({name}); the time grid is degenerate "
                    f"(repeated or out-of-range times): check steps, t_start and t_end")
        first = group[0]
        structure = SegmentStructure(num_stages, first.post_evaluation is not None, first.push, first.kind,
                                     first.record, n, _masks(arrays, num_stages))
        segments.append(Segment(structure, arrays))
    return Plan(segments, history_size, steps[0].initial, np.float64(t_start), np.float64(t_end), solver)


def build_plan_from_arrays(initial: Step, rows: Dict[str, np.ndarray], kind: str, history_size: int,
                          final_steps: Sequence[Step], t_start: float, t_end: float, solver=None, *,
                          bulk_push: str = "post", last_step: Optional[Dict[str, np.ndarray]] = None) -> Plan:
    """A multistep plan from vectorised coefficients: ``initial``, then ``n`` update steps, then ``final_steps``.

    ``rows`` holds the executor arrays of the ``n`` updates (leading axis ``n``).  With
    ``bulk_push="post"`` (multistep with a post-evaluation) they need ``out_state``, ``out_history``,
    ``time``, ``post_alpha``, ``post_sigma``, ``step_index``, ``order``, ``phi``; with ``"stage0"``
    (UniPC: one stage whose output is pushed) also the one-stage ``stage_*`` and ``out_stage``.  The
    last update has no evaluation after it (and, with ``"stage0"``, no stage: ``last_step`` gives its
    ``out_state`` and ``out_history``).  The result equals :func:`build_plan_from_steps` of the same steps.
    """
    head = build_plan_from_steps([initial], t_start, t_end)
    n = rows["out_state"].shape[0]
    first = _widen_history(head.segments[0].arrays, history_size)
    segments = [Segment(head.segments[0].structure._replace(masks=_masks(first, 1)), first)]
    stages = 1 if bulk_push == "stage0" else 0
    for start, stop, bulk in ((0, n - 1, True), (n - 1, n, False)):
        if stop <= start:
            continue
        length = stop - start
        arrays = {name: np.asarray(value[start:stop]) for name, value in rows.items()}
        num_stages = stages if bulk else 0
        if not bulk and last_step is not None:
            arrays.update({name: np.asarray(value) for name, value in last_step.items()})
        if num_stages == 0:
            arrays.update({"stage_time": np.zeros((length, 0)), "stage_alpha": np.ones((length, 0)),
                           "stage_sigma": np.ones((length, 0)), "stage_state": np.zeros((length, 0)),
                           "stage_stage": np.zeros((length, 0, 0)),
                           "stage_history": np.zeros((length, 0, history_size)), "out_stage": np.zeros((length, 0))})
        post = bulk and bulk_push == "post"
        if not post:
            arrays["post_alpha"] = np.ones((length,))
            arrays["post_sigma"] = np.ones((length,))
        for name in EXECUTED:
            if name != "step_index" and not np.all(np.isfinite(arrays[name])):
                raise ValueError(
                    f"the plan has non-finite coefficients ({name}); the time grid is degenerate "
                    f"(repeated or out-of-range times): check steps, t_start and t_end")
        structure = SegmentStructure(num_stages, post, bulk_push if bulk else None, kind, True, length,
                                     _masks(arrays, num_stages))
        segments.append(Segment(structure, arrays))
    if final_steps:
        tail = build_plan_from_steps(list(final_steps), t_start, t_end)
        for segment in tail.segments:
            arrays = _widen_history(segment.arrays, history_size)
            arrays["step_index"] = arrays["step_index"] + n + 1
            structure = segment.structure._replace(masks=_masks(arrays, segment.num_stages))
            segments.append(Segment(structure, arrays))
    return Plan(_merge_equal_segments(segments), history_size, True, np.float64(t_start), np.float64(t_end), solver)


def _merge_equal_segments(segments: List[Segment]) -> List[Segment]:
    """Consecutive segments of one structure become one (one scan), as :func:`build_plan_from_steps` groups them."""
    merged: List[Segment] = []
    for segment in segments:
        s = segment.structure
        if merged:
            p = merged[-1].structure
            if (p.num_stages, p.post_evaluation, p.push, p.kind, p.record) == (s.num_stages, s.post_evaluation, s.push,
                                                                                s.kind, s.record):
                arrays = {name: np.concatenate([np.asarray(merged[-1].arrays[name]), np.asarray(value)])
                          for name, value in segment.arrays.items()}
                structure = p._replace(length=p.length + s.length, masks=_masks(arrays, s.num_stages))
                merged[-1] = Segment(structure, arrays)
                continue
        merged.append(segment)
    return merged


def _widen_history(arrays: Dict[str, np.ndarray], history_size: int) -> Dict[str, np.ndarray]:
    """The arrays with history axes zero-padded (on the oldest side) to ``history_size``."""
    arrays = dict(arrays)
    for name in ("stage_history", "out_history"):
        missing = history_size - arrays[name].shape[-1]
        if missing > 0:
            arrays[name] = np.concatenate([np.zeros(arrays[name].shape[:-1] + (missing,)), arrays[name]], axis=-1)
    return arrays


# -- stacking plans of equal structure (vmap over plans) ----------------------------------------------


def _history_reads_are_pushed(plan: Plan) -> bool:
    """Every nonzero history coefficient of the plan reads a slot that was pushed before."""
    size = plan.history_size
    pushes = 0
    for segment in plan.segments:
        before = pushes + np.arange(segment.length)  # pushes made before each row
        age = size - np.arange(size)  # slot m holds age H - m
        stage = np.any(np.asarray(segment.arrays["stage_history"]) != 0, axis=1)  # (rows, H)
        out = np.asarray(segment.arrays["out_history"]) != 0
        if np.any((stage | out) & (age[None, :] > before[:, None])):
            return False
        if segment.push is not None:
            pushes += segment.length
    return True


def paddable_segment(plan: Plan) -> Optional[int]:
    """The segment whose length :func:`stack_plans` may pad (the longest), or None.

    Padding prepends "restart" rows that keep the state and evaluate the model at ``(x, t_start)``.
    Without history they are no-ops.  With history they are only allowed while the state is still
    ``x_T`` (first segment, or right after the initial evaluation of a multistep plan): they push
    copies of ``F(x_T, t_start)`` -- what the initial evaluation pushes anyway -- into slots that
    the real plan reads only with zero coefficients.
    """
    lengths = [segment.length for segment in plan.segments]
    index = int(np.argmax(lengths))
    if not any(segment.push for segment in plan.segments):
        return index
    starts_at_x_t = index == 0 or (index == 1 and plan.initial and plan.segments[0].length == 1)
    return index if starts_at_x_t and _history_reads_are_pushed(plan) else None


def stacking_key(plan: Plan) -> tuple:
    """Plans with equal keys can be stacked by :func:`stack_plans` (lengths of the paddable segment aside)."""
    pad = paddable_segment(plan)
    return tuple((s.num_stages, s.post_evaluation, s.push, s.kind, s.record, None if i == pad else s.length)
                 for i, s in enumerate(plan.segments)) + (plan.initial,)


def _padded_arrays(plan: Plan, history_size: int, lengths: Sequence[int]) -> List[Dict[str, np.ndarray]]:
    first = plan.segments[0].arrays
    alpha0, sigma0 = float(first["stage_alpha"][0, 0]), float(first["stage_sigma"][0, 0])
    t_start = float(plan.t_start)
    out = []
    for segment, length in zip(plan.segments, lengths):
        arrays = {name: np.asarray(value) for name, value in segment.arrays.items()}
        for name in ("stage_history", "out_history"):
            missing = history_size - arrays[name].shape[-1]
            if missing:  # slot H - age: the oldest slots are on the left
                arrays[name] = np.concatenate([np.zeros(arrays[name].shape[:-1] + (missing,)), arrays[name]], axis=-1)
        extra = length - segment.length
        if extra:
            pad = {name: np.zeros((extra,) + value.shape[1:], value.dtype) for name, value in arrays.items()}
            for name in ("stage_time", "time"):
                pad[name][:] = t_start
            for name in ("stage_alpha", "post_alpha"):
                pad[name][:] = alpha0
            for name in ("stage_sigma", "post_sigma"):
                pad[name][:] = sigma0
            pad["stage_state"][:] = 1.0
            pad["out_state"][:] = 1.0
            pad["phi"][:] = np.nan
            arrays = {name: np.concatenate([pad[name], value]) for name, value in arrays.items()}
        out.append(arrays)
    return out


def stack_plans(plans: Sequence[Plan]) -> Plan:
    """Stack plans of equal :func:`stacking_key` into one plan with a leading axis on every leaf.

    Histories are zero-padded to the longest, the paddable segment to the longest length (exact:
    see :func:`paddable_segment`), and the masks are the union of the plans' masks.  Use it as
    ``jax.vmap(lambda p: execute_plan(p, evaluate, x))(stack_plans(plans))``.

    Raises:
      ValueError: the plans do not share a stacking key.
    """
    plans = list(plans)
    if not plans:
        raise ValueError("stack_plans needs at least one plan")
    keys = {stacking_key(plan) for plan in plans}
    if len(keys) != 1:
        raise ValueError(f"stack_plans: the plans have {len(keys)} different structures; group them by stacking_key")
    history_size = max(plan.history_size for plan in plans)
    template = plans[0]
    lengths = [max(plan.segments[i].length for plan in plans) for i in range(len(template.segments))]
    padded = [_padded_arrays(plan, history_size, lengths) for plan in plans]
    segments = []
    for index, segment in enumerate(template.segments):
        arrays = {name: np.stack([p[index][name] for p in padded]) for name in padded[0][index]}
        structure = segment.structure._replace(length=lengths[index],
                                               masks=_masks(arrays, segment.num_stages, axes=(0, 1)))
        segments.append(Segment(structure, arrays))
    return Plan(segments, history_size, template.initial, np.array([float(p.t_start) for p in plans]),
                np.array([float(p.t_end) for p in plans]))


# -- executor ------------------------------------------------------------------------------------


def execute_plan(plan: Plan, evaluate: Callable, x: jax.Array, *, return_trajectory: bool = False,
                 correct_xt: Optional[Callable] = None, callback: Optional[Callable] = None):
    """Run a plan: one ``lax.scan`` per segment.

    Args:
      plan: the plan (host arrays, or traced leaves under ``jit`` / ``vmap``).
      evaluate: ``evaluate(x, t, alpha, sigma, kind) -> F`` where ``t``, ``alpha``, ``sigma`` are
        scalars of the state dtype and ``kind`` is ``"noise"`` or ``"data"``.
      x: initial state ``x_T`` (floating dtype; solver arithmetic uses it).
      return_trajectory: also return the stacked trajectory (``x_T`` then every recorded step).
      correct_xt: optional ``correct_xt(x, t, step) -> x`` applied after every update.
      callback: optional ``callback(step_index, t)`` called on the host once per step through
        ``jax.debug.callback`` (for progress display); no cost when ``None``.

    Returns:
      ``x`` at the end, or ``(x, trajectory)``.
    """
    dtype = x.dtype
    history_size = plan.history_size
    history = jnp.zeros((history_size,) + x.shape, dtype)
    trajectory = [x[None]] if (return_trajectory and not plan.initial) else []

    for segment in plan.segments:
        rows = {name: jnp.asarray(segment.arrays[name], dtype=jnp.int32 if name == "step_index" else dtype)
                for name in EXECUTED}
        masks = segment.masks
        num_stages = segment.num_stages

        def body(carry, row, segment=segment, masks=masks, num_stages=num_stages):
            state, hist = carry
            outputs = []
            for k in range(num_stages):
                if masks["stage_state_is_one"][k]:
                    stage_input = state
                elif masks["stage_state"][k]:
                    stage_input = row["stage_state"][k] * state
                else:
                    stage_input = jnp.zeros_like(state)
                for j in range(k):
                    if masks["stage_stage"][k][j]:
                        stage_input = stage_input + row["stage_stage"][k, j] * outputs[j]
                for m in range(history_size):
                    if masks["stage_history"][k][m]:
                        stage_input = stage_input + row["stage_history"][k, m] * hist[m]
                outputs.append(evaluate(stage_input, row["stage_time"][k], row["stage_alpha"][k],
                                        row["stage_sigma"][k], segment.kind))
            new_state = row["out_state"] * state if masks["out_state"] else jnp.zeros_like(state)
            for k in range(num_stages):
                if masks["out_stage"][k]:
                    new_state = new_state + row["out_stage"][k] * outputs[k]
            for m in range(history_size):
                if masks["out_history"][m]:
                    new_state = new_state + row["out_history"][m] * hist[m]
            if correct_xt is not None:
                new_state = correct_xt(new_state, row["time"], row["step_index"]).astype(dtype)
            post = None
            if segment.post_evaluation:
                post = evaluate(new_state, row["time"], row["post_alpha"], row["post_sigma"], segment.kind)
            if segment.push is not None and history_size:
                pushed = outputs[0] if segment.push == "stage0" else post
                assert pushed is not None  # a "post" push always has a post-evaluation (build_plan_from_steps)
                hist = jnp.concatenate([hist[1:], pushed[None].astype(dtype)], axis=0)
            if callback is not None:
                # unordered (ordered effects are refused on several devices); one element of the new
                # state makes the call wait for the step's work instead of firing on plan constants
                report = callback

                def after_step(step, t, _done):
                    report(step, t)

                jax.debug.callback(after_step, row["step_index"], row["time"], new_state.reshape(-1)[0])
            return (new_state.astype(dtype), hist), (new_state if (return_trajectory and segment.record) else None)

        (x, history), recorded = jax.lax.scan(body, (x, history), rows)
        if return_trajectory and segment.record and recorded is not None:
            trajectory.append(recorded)

    if return_trajectory:
        return x, jnp.concatenate(trajectory, axis=0)
    return x
