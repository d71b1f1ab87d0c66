"""The official building blocks (tests/data/reference, kind != case): schedules, grids, orders,
phi series, interpolation, thresholding, model wrapper and every single update function."""

import jax.numpy as jnp
import numpy as np
import pytest
import reference_cases as rc
from parity import assert_parity

import scire_jax as sj
from scire_jax.core.schedules import interpolate
from scire_jax.core.solvers import base

pytestmark = pytest.mark.usefixtures("x64")  # parity with float64 references

BLOCKS = rc.manifest()["building_blocks"]


def _blocks(kind, predicate=lambda b: True):
    return [b for b in BLOCKS if b["kind"] == kind and predicate(b)]


def _array(block, key):
    return rc.npz(block["npz"])[block["keys"][key]]


def _close(ours, reference, rtol):
    # NaN exactly where extrapolation gives alpha > 1; tolerance relative to the largest entry
    assert_parity(ours, reference, rtol, scale="max")


# float32 blocks carry the official float32 cancellations (up to ~1e-3 near t_end, tests/data/reference/README.md);
# our host math is float64 and stable, so they are compared with that tolerance.
def _rtol(block):
    return 1e-10 if block["dtype"] == "float64" else 2e-3


def test_every_building_block_kind_is_covered():
    kinds = {b["kind"] for b in BLOCKS}
    assert kinds == {"schedule_functions", "get_time_steps", "get_orders_and_timesteps_for_singlestep_solver",
                     "series_phi", "interpolate_fn", "update", "model_wrapper", "dynamic_thresholding"}


BLOCKS_BY_ID = {b["id"]: b for b in BLOCKS}


@pytest.mark.parametrize("block", _blocks("schedule_functions"), ids=lambda b: b["id"])
def test_schedule_functions(block):
    schedule = rc.schedule(block["schedule"], block["impl"])
    assert schedule.t_max == pytest.approx(block["attributes"]["T"])
    assert schedule.total_n == block["attributes"]["total_N"]
    t = _array(block, "t").astype(np.float64)
    rtol = _rtol(block)
    if block["dtype"] == "float32":
        # The official float32 values carry its cancellations (up to 4e-2 absolute in lambda near t = 0);
        # ours (float64 host math at the same float32-rounded times) must match the float64 official values.
        block = BLOCKS_BY_ID[block["id"].replace("float32", "float64")]
        rtol = 1e-5
    with np.errstate(invalid="ignore"):
        if block["impl"] == "scire":
            _close(schedule.alpha(t), _array(block, "marginal_alpha"), rtol)
            _close(schedule.sigma(t), _array(block, "marginal_std"), rtol)
            _close(schedule.nsr(t), _array(block, "marginal_NSR"), rtol)
            nsr = _array(block, "nsr").astype(np.float64)
            if "inverse_NSR" in block["keys"]:
                _close(schedule.inverse_nsr(nsr), _array(block, "inverse_NSR"), rtol)
            else:  # the official cosine inverse crashes; ours inverts the forward map
                assert block["exceptions"]["inverse_NSR"]["type"] == "TypeError"
                np.testing.assert_allclose(schedule.nsr(schedule.inverse_nsr(nsr)), nsr, rtol=1e-9)
        else:
            _close(schedule.log_alpha(t), _array(block, "marginal_log_mean_coeff"), rtol)
            _close(schedule.alpha(t), _array(block, "marginal_alpha"), rtol)
            _close(schedule.sigma(t), _array(block, "marginal_std"), rtol)
            _close(schedule.log_snr(t), _array(block, "marginal_lambda"), rtol)
            _close(schedule.inverse_log_snr(_array(block, "lambda").astype(np.float64)),
                   _array(block, "inverse_lambda"), rtol)


@pytest.mark.parametrize("block", _blocks("interpolate_fn"), ids=lambda b: b["id"])
def test_interpolate_with_linear_extrapolation(block):
    x, xp, yp = (_array(block, k).astype(np.float64) for k in ("x", "xp", "yp"))
    out = np.stack([interpolate(x[:, c], xp[c], yp[c]) for c in range(xp.shape[0])], axis=1)
    _close(out, _array(block, "out"), _rtol(block))
    jax_out = np.stack([np.asarray(interpolate(jnp.asarray(x[:, c]), xp[c], yp[c])) for c in range(xp.shape[0])], axis=1)
    _close(jax_out, _array(block, "out"), 1e-9 if block["dtype"] == "float64" else 1e-5)


@pytest.mark.parametrize("block", _blocks("series_phi"), ids=lambda b: b["id"])
def test_series_phi(block):
    ours = sj.series_phi(block["params"]["x"], block["params"]["n"])
    assert_parity(ours, _array(block, "phi"), 1e-14, what=block["id"])


@pytest.mark.parametrize("block", _blocks("dynamic_thresholding"), ids=lambda b: b["id"])
def test_dynamic_thresholding(block):
    params = block["params"]
    ours = sj.dynamic_thresholding(jnp.asarray(_array(block, "x0")), params["dynamic_thresholding_ratio"],
                                   params["thresholding_max_val"])
    assert_parity(ours, _array(block, "out"), 1e-12, 1e-14, what=block["id"])


def _grid_blocks(status):
    return _blocks("get_time_steps", lambda b: b["status"] == status)


@pytest.mark.parametrize("block", _grid_blocks("ok"), ids=lambda b: b["id"])
def test_time_grids(block):
    params = block["params"]
    schedule = rc.schedule(block["schedule"], block["impl"])
    grid = sj.timesteps.time_grid(schedule, params["skip_type"], params["t_T"], params["t_0"], params["N"])
    _close(grid, _array(block, "timesteps"), _rtol(block))


@pytest.mark.parametrize("block", _grid_blocks("exception"), ids=lambda b: b["id"])
def test_time_grid_official_failures_work_here(block):
    # Every failing official grid is the cosine NSR grid (its inverse NSR crashes); ours is exact.
    params = block["params"]
    assert block["schedule"] == "vp_cosine" and params["skip_type"] == "NSR"
    schedule = rc.schedule(block["schedule"])
    grid = sj.timesteps.time_grid(schedule, "NSR", params["t_T"], params["t_0"], params["N"])
    nsr_start, nsr_end = schedule.nsr(params["t_T"]), schedule.nsr(params["t_0"])
    shifted = schedule.nsr(grid) + 3.1 * nsr_end
    expected = (nsr_start + 3.1 * nsr_end) ** (1 - np.arange(params["N"] + 1) / params["N"]) * (
        4.1 * nsr_end) ** (np.arange(params["N"] + 1) / params["N"])
    np.testing.assert_allclose(shifted, expected, rtol=1e-9)


def _outer_grid(block):
    """Our outer grid and orders for the singlestep methods (agile for SciRE, 'singlestep' for DPM)."""
    params = block["params"]
    schedule = rc.schedule(block["schedule"], block["impl"])
    steps, order = params["steps"], params["order"]
    orders = base.agile_orders(steps, order)
    if block["impl"] == "dpm" and params["skip_type"] == "logSNR":
        outer = sj.timesteps.time_grid(schedule, "logSNR", params["t_T"], params["t_0"], len(orders))
    else:
        grid = sj.timesteps.time_grid(schedule, params["skip_type"], params["t_T"], params["t_0"], steps)
        outer = grid[np.cumsum([0] + orders)]
    return orders, outer


ORDER_BLOCKS = _blocks("get_orders_and_timesteps_for_singlestep_solver")


@pytest.mark.parametrize("block", ORDER_BLOCKS, ids=lambda b: b["id"])
def test_singlestep_orders_and_outer_grid(block):
    params = block["params"]
    if block["status"] == "exception":
        message = block["exception"]["message"]
        if params["order"] not in (1, 2, 3):
            with pytest.raises(ValueError, match=f"order={params['order']}"):
                sj.SciRE(method="singlestep_agile", order=params["order"], steps=max(params["steps"], 4))
        else:  # the cosine NSR grid (official inverse NSR crashes): ours builds it
            assert block["schedule"] == "vp_cosine" and params["skip_type"] == "NSR", message
            orders, outer = _outer_grid(block)
            assert sum(orders) == params["steps"] and np.all(np.diff(outer) < 0)
        return
    orders, outer = _outer_grid(block)
    assert orders == block["orders"]
    _close(outer, _array(block, "timesteps_outer"), 1e-10)


def _wrapper_case(block):
    """A case-like dict for reference_cases.noise_function from a model_wrapper block."""
    params = block["params"]
    schedule = block["schedule"]
    continuous = schedule == "vp_cosine" or (block["impl"] == "dpm" and schedule == "vp_linear")
    wrapper = {"model_type": params["model_type"], "guidance_type": params["guidance_type"],
               "guidance_scale": params.get("guidance_scale", 1.0), "condition": params.get("condition"),
               "unconditional_condition": params.get("unconditional_condition"),
               "t_input_inverse": "t_continuous = t_input" if continuous else "t_continuous = t_input / 1000 + 1 / N"}
    return {"route": "model_wrapper", "model": block["model"], "wrapper": wrapper, "dtype": block["dtype"]}


@pytest.mark.parametrize("block", _blocks("model_wrapper"), ids=lambda b: b["id"])
def test_model_wrapper(block):
    schedule = rc.schedule(block["schedule"], block["impl"])
    noise_fn = rc.noise_function(_wrapper_case(block), schedule)
    x = jnp.asarray(_array(block, "x"))
    outputs = np.stack([np.asarray(noise_fn(None, x, jnp.full((x.shape[0],), t))) for t in block["params"]["times"]])
    if block["status"] == "ok":
        assert_parity(outputs, _array(block, "out"), 1e-10, 1e-12, what=block["id"])
    else:
        # Official defect (x_start / v not broadcast per sample, 'score' rejected): ours is exact.
        assert_parity(outputs, _array(block, "eps_exact"), 1e-9, 1e-11, what=block["id"])


# -- single updates ------------------------------------------------------------------------------------


def _evaluate(model, schedule, kind, x, t):
    t_vector = jnp.full((x.shape[0],), t)
    eps = np.asarray(model.noise(jnp.asarray(x), t_vector, schedule))
    if kind == "noise":
        return eps
    alpha, sigma = base.coefficients(schedule, t)
    return (x - sigma * eps) / alpha


def _solver_of(block):
    algorithm = block["algorithm_type"]
    if block["impl"] == "scire":
        return sj.SciRE(algorithm={"scire_v1": "v1", "scire_v2": "v2"}[algorithm], order=1, steps=4)
    return sj.DPMSolver(algorithm=algorithm, solver_type=block["params"].get("solver_type", "dpmsolver"),
                        order=1, steps=4)


def _scale(block, schedule, t):
    """SciRE updates act on the scaled state (v1: x / alpha, v2: x / sigma); DPM-Solver on x."""
    if block["impl"] == "dpm":
        return 1.0
    alpha, sigma = base.coefficients(schedule, t)
    return alpha if block["algorithm_type"] == "scire_v1" else sigma


@pytest.mark.parametrize("block", _blocks("update"), ids=lambda b: b["id"])
def test_single_update(block):
    params = block["params"]
    schedule = rc.schedule(block["schedule"], block["impl"])
    model = rc.model(block["model"])
    solver = _solver_of(block)
    kind = solver.model_kind
    producer = block["producer"].split(".")[-1]
    x_in = np.asarray(_array(block, "x"), dtype=np.float64)
    if "multistep" in producer:
        order = 2 if "second" in producer else 3
        times = list(params["t_prev_list"]) + [params["t"]]
        history = [np.asarray(_array(block, name), dtype=np.float64) for name in params["model_prev_list"]]
        if block["impl"] == "scire":
            update = solver.multistep_update(schedule, times, order, params["phi_step"])
        else:
            update = solver.multistep_update(schedule, times, order)
        x = x_in * _scale(block, schedule, times[-2])
        out = update.state * x + sum(coef * history[-age] for age, coef in update.history.items())
    else:
        order = 1 if "first" in producer else 2 if "second" in producer else 3
        s, t = params["s"], params["t"]
        if block["impl"] == "scire":
            step = solver.singlestep_step(schedule, s, t, order, params.get("phi_step", 1.0), params.get("r1"),
                                          params.get("r2"))
        else:
            step = solver.singlestep_step(schedule, s, t, order, params.get("r1"), params.get("r2"))
        x = x_in * _scale(block, schedule, s)
        outputs = []
        for k, combination in enumerate(step.stage_inputs):
            stage_input = combination.state * x + sum(coef * outputs[j] for j, coef in combination.stages.items())
            outputs.append(_evaluate(model, schedule, kind, stage_input, step.stage_times[k]))
        for k, name in enumerate(("model_s", "model_s1", "model_s2")[:len(outputs)]):
            if name in block["keys"]:
                assert_parity(outputs[k], _array(block, name), 1e-10, 1e-12, what=f"{block['id']} {name}")
        out = step.output.state * x + sum(coef * outputs[j] for j, coef in step.output.stages.items())
    reference = np.asarray(_array(block, "x_t"), dtype=np.float64) * _scale(block, schedule, params["t"])
    assert_parity(out, reference, 1e-10, 1e-10 * np.max(np.abs(reference)), what=block["id"])
