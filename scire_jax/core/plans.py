"""The plan / executor architecture shared by every solver.

A solver is compiled in two stages (DESIGN.md §2):

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

__all__ = ["Step", "Segment", "Plan", "build_plan_from_steps", "execute_plan"]

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


class Segment(NamedTuple):
    """A run of steps with the same structure, consumed by one ``lax.scan``.

    Static fields: ``num_stages`` (S), ``post_evaluation``, ``push``, ``kind``, ``record``, and the
    masks of coefficients that are nonzero somewhere in the segment (zero terms are not traced).
    Array fields (leading axis = steps in the segment): see :func:`build_plan_from_steps`.
    """

    num_stages: int
    post_evaluation: bool
    push: Optional[str]
    kind: str
    record: bool
    arrays: Dict[str, np.ndarray]
    masks: Dict[str, Tuple]

    @property
    def length(self) -> int:
        return int(self.arrays["time"].shape[0])

    @property
    def nfe(self) -> int:
        return self.length * (self.num_stages + int(self.post_evaluation))


@dataclasses.dataclass(frozen=True)
class Plan:
    """Everything x-independent about a solve, computed on the host in float64.

    Attributes:
      segments: the scan segments in order.
      history_size: length H of the history buffer.
      nfe: exact number of network evaluations of a solve.
      times: time of the state after each step, shape ``(num_steps,)``.
      evaluation_times: every network evaluation time, in call order.
      orders: nominal order of each step.
      phi: phi of each step (NaN for steps without one).
      t_start, t_end: integration interval.
      solver: the solver configuration that produced the plan.
    """

    segments: Tuple[Segment, ...]
    history_size: int
    t_start: float
    t_end: float
    solver: Any = None
    steps: Tuple[Step, ...] = ()

    @property
    def nfe(self) -> int:
        return int(sum(segment.nfe for segment in self.segments))

    @property
    def num_steps(self) -> int:
        return len(self.steps)

    @property
    def times(self) -> np.ndarray:
        return np.array([step.time for step in self.steps])

    @property
    def orders(self) -> np.ndarray:
        return np.array([step.order for step in self.steps])

    @property
    def phi(self) -> np.ndarray:
        return np.array([step.phi for step in self.steps])

    @property
    def evaluation_times(self) -> np.ndarray:
        times = []
        for step in self.steps:
            times.extend(step.stage_times)
            if step.post_evaluation is not None:
                times.append(step.time)
        return np.array(times)

    @property
    def trajectory_times(self) -> np.ndarray:
        """Times of the entries of ``solve(..., return_trajectory=True)``."""
        recorded = [step.time for step in self.steps if step.record]
        prefix = [] if self.steps[0].initial else [self.t_start]
        return np.array(prefix + recorded)

    def summary(self) -> str:
        """A human-readable table of the steps (time, order, phi, network calls)."""
        lines = [f"{type(self.solver).__name__ if self.solver is not None else 'plan'}: "
                 f"{self.num_steps} steps, NFE = {self.nfe}, t: {self.t_start:.6g} -> {self.t_end:.6g}",
                 f"{'step':>4} {'t':>12} {'order':>5} {'phi':>10} {'calls':>5} {'kind':>5}"]
        for index, step in enumerate(self.steps):
            calls = len(step.stage_times) + int(step.post_evaluation is not None)
            lines.append(f"{index:>4} {step.time:>12.6g} {step.order:>5} {step.phi:>10.6f} {calls:>5} {step.kind:>5}")
        return "\n".join(lines)

    def __repr__(self):
        return (f"Plan(solver={self.solver!r}, steps={self.num_steps}, nfe={self.nfe}, "
                f"segments={[(s.length, s.num_stages, s.post_evaluation) for s in self.segments]})")


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
            "step_index": np.zeros((n,), dtype=np.int32),
        }
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
        for name, value in arrays.items():
            if name != "step_index" and not np.all(np.isfinite(value)):
                raise ValueError(
                    f"the plan has non-finite coefficients ({name}); the time grid is degenerate "
                    f"(repeated or out-of-range times): check steps, t_start and t_end")
        masks = {
            "stage_stage": tuple(tuple(bool(v) for v in np.any(arrays["stage_stage"][:, k, :] != 0, axis=0))
                                 for k in range(num_stages)),
            "stage_history": tuple(tuple(bool(v) for v in np.any(arrays["stage_history"][:, k, :] != 0, axis=0))
                                   for k in range(num_stages)),
            "stage_state": tuple(bool(v) for v in np.any(arrays["stage_state"] != 0, axis=0)),
            "stage_state_is_one": tuple(bool(v) for v in np.all(arrays["stage_state"] == 1, axis=0)),
            "out_stage": tuple(bool(v) for v in np.any(arrays["out_stage"] != 0, axis=0)),
            "out_history": tuple(bool(v) for v in np.any(arrays["out_history"] != 0, axis=0)),
            "out_state": bool(np.any(arrays["out_state"] != 0)),
        }
        segments.append(Segment(num_stages, group[0].post_evaluation is not None, group[0].push,
                                group[0].kind, group[0].record, arrays, masks))
    # global step indices (what correct_xt and callbacks see)
    index = 0
    for segment in segments:
        segment.arrays["step_index"][:] = np.arange(index, index + segment.length)
        index += segment.length
    return Plan(tuple(segments), history_size, float(t_start), float(t_end), solver, tuple(steps))


# -- executor ------------------------------------------------------------------------------------


def _broadcast_time(t, x):
    return jnp.broadcast_to(t, (x.shape[0],))


def execute_plan(plan: Plan, evaluate: Callable, x: jax.Array, *, return_trajectory: bool = False,
                 correct_xt: Optional[Callable] = None, callback: Optional[Callable] = None):
    """Run a plan: one ``lax.scan`` per segment.

    Args:
      plan: the host-side plan.
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
    history = jnp.zeros((plan.history_size,) + x.shape, dtype)
    trajectory = [x[None]] if (return_trajectory and not plan.steps[0].initial) else []

    for segment in plan.segments:
        rows = {name: jnp.asarray(value, dtype=jnp.int32 if name == "step_index" else dtype)
                for name, value in segment.arrays.items()}
        masks = segment.masks
        num_stages = segment.num_stages
        history_size = plan.history_size

        def body(carry, row, segment=segment, masks=masks, num_stages=num_stages, history_size=history_size):
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
            if segment.post_evaluation:
                post = evaluate(new_state, row["time"], row["post_alpha"], row["post_sigma"], segment.kind)
            if segment.push is not None and history_size:
                pushed = outputs[0] if segment.push == "stage0" else post
                hist = jnp.concatenate([hist[1:], pushed[None].astype(dtype)], axis=0)
            if callback is not None:
                jax.debug.callback(callback, row["step_index"], row["time"], ordered=True)
            return (new_state.astype(dtype), hist), (new_state if (return_trajectory and segment.record) else None)

        (x, history), recorded = jax.lax.scan(body, (x, history), rows)
        if return_trajectory and segment.record:
            trajectory.append(recorded)

    if return_trajectory:
        return x, jnp.concatenate(trajectory, axis=0)
    return x
