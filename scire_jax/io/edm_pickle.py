"""Safe loading of EDM network snapshots (``network-snapshot-*.pkl``, NVlabs/edm) into Flax modules.

EDM pickles are normally loaded with ``pickle.load``, which *executes* the EDM source text stored in
each persistent object (``torch_utils.persistence._reconstruct_persistent_obj`` ``exec()``s
``meta.module_src``) and lets any global in the file run.  :func:`load_edm_pickle` never executes
anything from the file:

* :class:`EDMUnpickler` (a ``pickle.Unpickler``) resolves only an allow-list of globals, each to a
  harmless local stand-in: the persistence hook becomes a :class:`PersistentRecord` (class name,
  constructor kwargs, state; ``module_src`` kept as text and only inspected), tensor/parameter rebuild
  records become numpy arrays, ``torch.storage._load_from_bytes`` blobs (legacy ``torch.save`` streams)
  are parsed into numpy without torch, ``torch.nn.ModuleDict`` becomes a plain record, numpy scalars
  become Python numbers.  Any other global (``builtins.exec``, ``posix.system``, ...) and any persistent
  id in the outer stream is refused.
* The ``ema`` entry must then be an EDM preconditioner or network whose records all come from one
  ``training/networks.py`` text that defines the recorded classes; its state dict is checked strictly
  against the Flax module built from the recorded constructor kwargs.

Every failure is one ``ValueError`` line naming the file and what was refused.

Example:
    >>> module, params, info = load_edm_pickle("network-snapshot-ddpmpp_cond_aug-vp.pkl")  # doctest: +SKIP
    >>> denoised = module.apply({"params": params}, x_nhwc, sigma, class_labels)  # doctest: +SKIP
"""

from __future__ import annotations

import collections
import hashlib
import io
import math
import pickle
import re
import struct
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Tuple

import numpy as np

from scire_jax.core import schedules
from scire_jax.io.convert.weights import fill_params
from scire_jax.models import edm

__all__ = [
    "load_edm_pickle",
    "read_edm_pickle",
    "EDMUnpickler",
    "PersistentRecord",
    "params_from_state_dict",
    "schedule_mapping",
    "edm_apply_fn",
    "KNOWN_NETWORKS_SRC_SHA256",
]

# sha256 of EDM's training/networks.py at NVlabs/edm 008a4e5 (the released code since 2022-10).
KNOWN_NETWORKS_SRC_SHA256 = frozenset({"5db27dcd96674b95c72d5e6491b879cdc35e24039ada3411b4b46a28ed1fe284"})

# Persistent classes of training/networks.py a snapshot's network may contain.
_NETWORK_LAYER_CLASSES = frozenset({"Linear", "Conv2d", "GroupNorm", "UNetBlock", "PositionalEmbedding",
                                    "FourierEmbedding"})
_TOP_CLASSES = frozenset(edm.NETWORK_CLASSES) | frozenset(edm.PRECOND_CLASSES)
_PRECOND_ATTRIBUTES = ("img_resolution", "img_channels", "label_dim", "use_fp16", "sigma_min", "sigma_max",
                       "sigma_data", "beta_d", "beta_min", "M", "epsilon_t", "C_1", "C_2")
_STORAGE_DTYPES = {"FloatStorage": "<f4", "DoubleStorage": "<f8", "HalfStorage": "<f2", "LongStorage": "<i8",
                   "IntStorage": "<i4", "ShortStorage": "<i2", "CharStorage": "i1", "ByteStorage": "u1",
                   "BoolStorage": "?"}
_NUMPY_SCALAR_KINDS = "biuf?"  # no object / void / string scalars
_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_LEGACY_PROTOCOL = 1001
_MAX_DEPTH = 16  # EDM modules nest 4 deep (precond.model.enc.block.conv)
_EDM_SAMPLER_SIGMA = (0.002, 80.0)  # generate.edm_sampler defaults, clipped to the net's range


class _Refused(Exception):
    """Something in the file is not EDM snapshot data; the message says what."""


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


# -- stand-ins for the allowed globals ------------------------------------------------------------------


class PersistentRecord:
    """What ``torch_utils.persistence._reconstruct_persistent_obj(meta)`` stands for, as inert data.

    Attributes:
      class_name: the persistent class (``meta['class_name']``).
      state: the object's ``__dict__`` as pickled (module state: ``_parameters``, ``_modules``, ...).
      module_src: the source text EDM would ``exec()``; kept as a string, never executed or compiled.
      version: ``torch_utils.persistence`` format version.
    """

    __slots__ = ("class_name", "state", "module_src", "version")

    def __init__(self, class_name: str, state: dict, module_src: str, version: Any):
        self.class_name = class_name
        self.state = state
        self.module_src = module_src
        self.version = version

    def __repr__(self):
        return f"PersistentRecord({self.class_name!r})"


def _reconstruct_persistent_obj(meta):
    if not isinstance(meta, dict):
        raise _Refused(f"persistent object meta is a {type(meta).__name__}, not a dict")
    if meta.get("type") != "class":
        raise _Refused(f"persistent object of type {_short(meta.get('type'))} (only 'class' is supported)")
    class_name, module_src, state = meta.get("class_name"), meta.get("module_src"), meta.get("state")
    if not isinstance(class_name, str) or not isinstance(module_src, str) or not isinstance(state, dict):
        raise _Refused("persistent object meta lacks class_name / module_src (str) or state (dict)")
    return PersistentRecord(class_name, state, module_src, meta.get("version"))


class _ModuleDictRecord:
    """``torch.nn.ModuleDict`` stand-in: ``NEWOBJ`` then ``BUILD`` stores the module ``__dict__``."""

    def __init__(self, *args):
        if args:
            raise _Refused("torch.nn.ModuleDict created with arguments")
        self.state: dict = {}

    def __setstate__(self, state):
        if not isinstance(state, dict):
            raise _Refused("torch.nn.ModuleDict state is not a dict")
        self.state = state


class _DtypeRecord:
    """``numpy.dtype(code, align, copy)`` stand-in; only numeric scalar dtypes are ever materialised."""

    def __init__(self, code, align=False, copy=True):
        if not isinstance(code, str) or len(code) > 4:
            raise _Refused(f"numpy.dtype({_short(code)})")
        self.code = code
        self.byteorder = "="

    def __setstate__(self, state):
        if isinstance(state, tuple) and len(state) > 1 and state[1] in ("<", ">", "|", "="):
            self.byteorder = state[1]

    def dtype(self) -> np.dtype:
        try:
            dtype = np.dtype(self.code)
        except TypeError as error:
            raise _Refused(f"numpy dtype {self.code!r}") from error
        if dtype.kind not in _NUMPY_SCALAR_KINDS or dtype.fields is not None or dtype.subdtype is not None:
            raise _Refused(f"numpy scalar of dtype {self.code!r} (only numeric scalars are accepted)")
        return dtype.newbyteorder("<" if self.byteorder == "<" else ">") if self.byteorder in "<>" else dtype


def _numpy_scalar(dtype, data=None):
    if not isinstance(dtype, _DtypeRecord) or not isinstance(data, bytes):
        raise _Refused("numpy scalar record with unexpected arguments")
    dtype = dtype.dtype()
    if len(data) != dtype.itemsize:
        raise _Refused(f"numpy scalar of {len(data)} bytes for dtype {dtype}")
    return np.frombuffer(data, dtype=dtype)[0].item()


class _Storage:
    """A typed storage read from a legacy ``torch.save`` blob: a flat numpy array."""

    __slots__ = ("array",)

    def __init__(self, array: np.ndarray):
        self.array = array


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None,
                       metadata=None):
    if not isinstance(storage, _Storage):
        raise _Refused("tensor rebuild record without a storage")
    if not (isinstance(size, tuple) and isinstance(stride, tuple) and len(size) == len(stride)
            and all(isinstance(v, int) and v >= 0 for v in size + stride)
            and isinstance(storage_offset, int) and storage_offset >= 0):
        raise _Refused("tensor rebuild record with malformed size / stride / offset")
    flat = storage.array
    count = math.prod(size)
    if count == 0:
        return np.zeros(size, dtype=flat.dtype)
    if count > flat.shape[0]:  # zero strides could make a small storage into a huge copy
        raise _Refused(f"tensor of size {size} is larger than its storage of {flat.shape[0]} elements")
    last = storage_offset + sum((n - 1) * s for n, s in zip(size, stride))
    if last >= flat.shape[0]:  # as_strided does not check bounds
        raise _Refused(f"tensor of size {size} / stride {stride} reads past its storage of {flat.shape[0]} elements")
    view = np.lib.stride_tricks.as_strided(flat[storage_offset:], shape=size,
                                           strides=tuple(s * flat.itemsize for s in stride), writeable=False)
    return np.array(view)  # own, contiguous copy


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None, *state):
    if not isinstance(data, np.ndarray):
        raise _Refused("parameter rebuild record without a tensor")
    return data


class _StorageType:
    """Marker for ``torch.<X>Storage`` inside a storage blob."""

    __slots__ = ("name", "dtype")

    def __init__(self, name: str):
        self.name = name
        self.dtype = np.dtype(_STORAGE_DTYPES[name])


class _BlobUnpickler(pickle.Unpickler):
    """Unpickler of the small pickles inside a legacy storage blob: storage types and persistent ids only."""

    def __init__(self, file, storages: dict):
        super().__init__(file)
        self.storages = storages

    def find_class(self, module, name):
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(name)
        raise _Refused(f"global {module}.{name} inside a storage blob")

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) in (5, 6) and pid[0] == "storage"):
            raise _Refused(f"persistent id {_short(pid)} inside a storage blob")
        storage_type, key, _location, numel = pid[1:5]
        view = pid[5] if len(pid) == 6 else None
        if not isinstance(storage_type, _StorageType) or not isinstance(key, str) or not isinstance(numel, int):
            raise _Refused(f"storage persistent id {_short(pid)}")
        if view is not None:
            raise _Refused("storage views inside a storage blob")
        self.storages.setdefault(key, [storage_type, numel, None])
        return key


def _load_from_bytes(blob):
    """Parse one legacy (non-zip) ``torch.save`` stream of a storage without torch."""
    if not isinstance(blob, bytes):
        raise _Refused("storage blob is not bytes")
    stream = io.BytesIO(blob)
    storages: dict = {}

    def plain():
        return _BlobUnpickler(stream, storages).load()

    if plain() != _LEGACY_MAGIC:
        raise _Refused("storage blob without torch's legacy magic number")
    if plain() != _LEGACY_PROTOCOL:
        raise _Refused("storage blob of an unknown torch protocol version")
    sys_info = plain()
    if not isinstance(sys_info, dict) or not sys_info.get("little_endian", False):
        raise _Refused("storage blob that is not little-endian")
    key = plain()
    keys = plain()
    if not isinstance(key, str) or key not in storages or not isinstance(keys, list):
        raise _Refused("storage blob that does not hold exactly one storage")
    for name in keys:
        if name not in storages:
            raise _Refused(f"storage blob lists unknown storage key {_short(name)}")
        storage_type, numel, _ = storages[name]
        header = stream.read(8)
        if len(header) != 8:
            raise _Refused("storage blob is truncated")
        (count,) = struct.unpack("<q", header)
        if count != numel or count < 0:
            raise _Refused(f"storage blob holds {count} elements, its record says {numel}")
        data = stream.read(count * storage_type.dtype.itemsize)
        if len(data) != count * storage_type.dtype.itemsize:
            raise _Refused("storage blob is truncated")
        storages[name][2] = np.frombuffer(data, dtype=storage_type.dtype).copy()
    if storages[key][2] is None:
        raise _Refused("storage blob without data for its storage")
    return _Storage(storages[key][2])


def _ordered_dict(*args):
    if args and not (len(args) == 1 and isinstance(args[0], (list, tuple))):
        raise _Refused("collections.OrderedDict with unexpected arguments")
    return collections.OrderedDict(*args)


_ALLOWED_GLOBALS = {
    ("collections", "OrderedDict"): _ordered_dict,
    ("torch_utils.persistence", "_reconstruct_persistent_obj"): _reconstruct_persistent_obj,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("torch.storage", "_load_from_bytes"): _load_from_bytes,
    ("torch.nn.modules.container", "ModuleDict"): _ModuleDictRecord,
    ("numpy", "dtype"): _DtypeRecord,
    ("numpy.core.multiarray", "scalar"): _numpy_scalar,  # files written with numpy 1.x
    ("numpy._core.multiarray", "scalar"): _numpy_scalar,  # numpy 2.x
}


class EDMUnpickler(pickle.Unpickler):
    """Data-only unpickler of EDM snapshots: allow-listed globals map to inert local stand-ins."""

    def find_class(self, module, name):
        target = _ALLOWED_GLOBALS.get((module, name))
        if target is None:
            raise _Refused(f"global {module}.{name}")
        return target

    def persistent_load(self, pid):
        raise _Refused(f"persistent id {_short(pid)} in the outer pickle")


# -- reading --------------------------------------------------------------------------------------------


def _fail(path, reason: str) -> ValueError:
    reason = " ".join(str(reason).split())  # one line, whatever the message holds
    return ValueError(f"refusing EDM pickle {str(path)!r}: {reason}; nothing from the file was executed")


def read_edm_pickle(path) -> Any:
    """Unpickle ``path`` with :class:`EDMUnpickler` (data only); raises one-line ``ValueError``s."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as error:
        raise ValueError(f"cannot read EDM pickle {str(path)!r}: {error.strerror or error}") from None
    try:
        return EDMUnpickler(io.BytesIO(data)).load()
    except _Refused as error:
        raise _fail(path, f"refused {error}") from None
    except (EOFError, pickle.UnpicklingError, struct.error) as error:
        raise _fail(path, f"file is truncated or not a pickle ({type(error).__name__}: {error})") from None
    except Exception as error:  # noqa: BLE001 - malformed records: report, never propagate odd types
        raise _fail(path, f"malformed pickle data ({type(error).__name__}: {error})") from None


def _module_items(record) -> Dict[str, Any]:
    state = record.state
    for name in ("_parameters", "_buffers", "_modules"):
        if not isinstance(state.get(name), dict):
            raise _Refused(f"{getattr(record, 'class_name', 'ModuleDict')} record without a {name} dict")
    return state


def _collect_state_dict(record, prefix: str, module_src: str, out: Dict[str, np.ndarray],
                        seen: Optional[set] = None) -> None:
    """Walk EDM module records like ``nn.Module.state_dict()`` (parameters, persistent buffers, children)."""
    seen = set() if seen is None else seen
    if id(record) in seen or prefix.count(".") > _MAX_DEPTH:  # EDM networks are shallow trees
        raise _Refused(f"module graph is cyclic, shared or too deep at {prefix or 'ema'}")
    seen.add(id(record))
    if isinstance(record, PersistentRecord):
        if record.class_name not in _TOP_CLASSES | _NETWORK_LAYER_CLASSES:
            raise _Refused(f"unknown class {record.class_name!r} at {prefix or 'ema'}")
        if record.module_src != module_src:
            raise _Refused(f"{record.class_name} at {prefix or 'ema'} comes from another module source")
    elif not isinstance(record, _ModuleDictRecord):
        raise _Refused(f"{type(record).__name__} where a module was expected at {prefix or 'ema'}")
    state = _module_items(record)
    non_persistent = state.get("_non_persistent_buffers_set") or set()
    for kind in ("_parameters", "_buffers"):
        for name, value in state[kind].items():
            if value is None or (kind == "_buffers" and name in non_persistent):
                continue
            if not isinstance(value, np.ndarray):
                raise _Refused(f"{prefix}{name} is a {type(value).__name__}, not a tensor")
            out[prefix + name] = value
    for name, child in state["_modules"].items():
        if child is not None:
            _collect_state_dict(child, f"{prefix}{name}.", module_src, out, seen)


def _check_module_src(record: PersistentRecord) -> None:
    # Text inspection only: EDM's networks.py defines every recorded class as a torch.nn.Module.
    if f"class {record.class_name}(torch.nn.Module)" not in record.module_src:
        first = record.module_src.strip().splitlines()[0] if record.module_src.strip() else ""
        raise _Refused(f"ema: module_src is not EDM's training/networks.py (no 'class {record.class_name}"
                       f"(torch.nn.Module)'; starts with {_short(first, 60)})")


def _init_kwargs(record: PersistentRecord) -> dict:
    kwargs = record.state.get("_init_kwargs")
    args = record.state.get("_init_args", ())
    if not isinstance(kwargs, dict) or args not in ((), []):
        raise _Refused(f"{record.class_name} record without constructor kwargs (_init_kwargs)")
    return dict(kwargs)


def _edm_key(key: str) -> Tuple[str]:
    """Flax-derived key ``model.enc_16x16_conv.weight`` -> EDM key ``model.enc.16x16_conv.weight``."""
    return (re.sub(r"(^|\.)(enc|dec)_(?=\d)", r"\1\2.", key),)


def params_from_state_dict(module, state_dict: Mapping[str, np.ndarray], source: str = "EDM state dict") -> dict:
    """Flax ``params`` of an :mod:`scire_jax.models.edm` module from an EDM ``state_dict`` (EDM key names).

    ``resample_filter`` buffers are checked against the module's filter and dropped (they are not
    parameters here); every other key must match a parameter and vice versa (``fill_params``).

    Args:
      module: network, preconditioner or :class:`~scire_jax.models.edm.UNetBlock`.
      state_dict: ``{EDM key: array}`` in EDM (NCHW / OIHW) layout, e.g. a safetensors file's content.
      source: what ``state_dict`` came from (error messages).

    Returns:
      Nested dict of float32 numpy arrays (``{"params": ...}`` is what ``module.apply`` takes).

    Raises:
      ValueError: missing / unexpected keys, shape mismatches, or an unexpected resampling filter.
    """
    network = module.model if isinstance(module, tuple(edm.PRECOND_CLASSES.values())) else module
    expected = edm.resample_kernel(network.resample_filter if hasattr(network, "resample_filter") else (1, 1))
    remaining = {}
    for key, value in state_dict.items():
        if key.endswith("resample_filter"):
            value = np.asarray(value)
            if value.shape != (1, 1) + expected.shape or not np.array_equal(value[0, 0], expected):
                raise ValueError(f"{source}: {key} {value.shape} is not the resampling filter the config implies")
            continue
        remaining[key] = value
    return fill_params(edm.abstract_params(module), remaining, candidates=_edm_key, source=source)


# -- schedule mapping -------------------------------------------------------------------------------------


def schedule_mapping(class_name: str, attributes: Mapping[str, Any], u: Optional[np.ndarray] = None,
                     kind: str = "edm") -> dict:
    """How an EDM preconditioner maps onto a scire_jax schedule (for :func:`scire_jax.wrap_model`).

    ``kind="edm"`` (any preconditioner; what EDM's samplers and SciRE's ``edm_scire`` use): EDM's own
    coordinates ``alpha = 1``, ``sigma = t`` (``schedules.edm``), the denoiser ``D(x; sigma=t)`` as
    data prediction.  ``kind="native"``: VPPrecond on ``schedules.linear(beta_min, beta_min + beta_d)``
    and iDDPMPrecond on its discrete table, both through the inner network's noise prediction
    (:meth:`~scire_jax.models.edm.VPPrecond.eps`); EDM / VE preconditioners have no other form.

    Args:
      class_name: ``VPPrecond``, ``VEPrecond``, ``iDDPMPrecond`` or ``EDMPrecond``.
      attributes: the preconditioner's attributes (``sigma_min``, ``sigma_max``, ``beta_d``, ...).
      u: iDDPMPrecond's ``u`` table (needed for its native mapping).
      kind: ``"edm"`` or ``"native"``.

    Returns:
      dict with ``schedule`` (a :mod:`scire_jax.core.schedules` object), ``prediction``
      (``"x_start"`` or ``"noise"``), ``time_input`` and ``time_input_scale`` (scire's network-time
      convention), ``method`` (``"__call__"``: ``D(x; sigma=t_input)``, ``"eps"``: the inner network's
      noise prediction at network time ``t_input``), ``t_start`` / ``t_end`` (EDM's sampler defaults
      ``sigma in [0.002, 80]`` clipped to the net's ``[sigma_min, sigma_max]``, as times of ``schedule``),
      and ``sigma_min`` / ``sigma_max`` (the net's).
    """
    if class_name not in edm.PRECOND_CLASSES:
        raise ValueError(f"no schedule mapping for {class_name!r} (a bare network has no preconditioner)")
    if kind not in ("edm", "native"):
        raise ValueError(f"kind={kind!r}; expected 'edm' or 'native'")
    lo = max(_EDM_SAMPLER_SIGMA[0], float(attributes["sigma_min"]))
    hi = min(_EDM_SAMPLER_SIGMA[1], float(attributes["sigma_max"]))
    out = {"kind": kind, "sigma_min": float(attributes["sigma_min"]), "sigma_max": float(attributes["sigma_max"])}
    if kind == "edm" or class_name in ("EDMPrecond", "VEPrecond"):
        out.update(kind="edm", schedule=schedules.edm(lo, hi), prediction="x_start", time_input="continuous",
                   time_input_scale=1.0, method="__call__", t_start=hi, t_end=lo)
    elif class_name == "VPPrecond":
        # log alpha_t = -beta_d t^2 / 4 - beta_min t / 2 is scire's linear schedule with
        # beta_0 = beta_min, beta_1 = beta_min + beta_d; sigma_edm(t) = sigma_t / alpha_t.
        beta_d, beta_min, m = float(attributes["beta_d"]), float(attributes["beta_min"]), int(attributes["M"])
        out.update(schedule=schedules.linear(beta_min, beta_min + beta_d), prediction="noise", time_input="scaled",
                   time_input_scale=float(m - 1), method="eps",
                   t_start=float(edm.vp_sigma_inv(np.float64(hi), beta_d, beta_min)),
                   t_end=float(edm.vp_sigma_inv(np.float64(lo), beta_d, beta_min)))
    else:  # iDDPMPrecond: alphas_cumprod[n - 1] = 1 / (1 + u[M - n]^2), network time n - 1
        m = int(attributes["M"])
        if u is None:
            raise ValueError("the native mapping of iDDPMPrecond needs its u table")
        if m != 1000:
            raise ValueError(f"the native mapping of iDDPMPrecond needs M = 1000 (scire's discrete time), got M={m}")
        u = np.asarray(u, dtype=np.float64)
        schedule = schedules.discrete(alphas_cumprod=1.0 / (1.0 + u[:m][::-1] ** 2))
        out.update(schedule=schedule, prediction="noise", time_input="discrete", time_input_scale=1.0, method="eps",
                   t_start=min(float(schedule.inverse_nsr(np.float64(hi))), schedule.t_max),
                   t_end=max(float(schedule.inverse_nsr(np.float64(lo))), schedule.t_min))
    return out


def edm_apply_fn(module, mapping: Mapping[str, Any]):
    """``apply_fn(params, x, t_input, class_labels=None)`` for :func:`scire_jax.wrap_model`.

    ``params`` is the ``params`` tree; ``x`` is NHWC; ``t_input`` is scire's network time for the
    mapping's ``time_input`` (``sigma`` for EDM / VE, ``(M-1) t`` for VP, the discrete step for iDDPM).
    """
    method = None if mapping["method"] == "__call__" else getattr(type(module), mapping["method"])

    def apply_fn(params, x, t_input, class_labels=None):
        return module.apply({"params": params}, x, t_input, class_labels, method=method)

    return apply_fn


# -- public loader -----------------------------------------------------------------------------------------


def load_edm_pickle(path, dtype=np.float32, precision: Any = None) -> Tuple[Any, dict, dict]:
    """Load the ``ema`` network of an EDM snapshot pickle as a Flax module and parameters, safely.

    Args:
      path: ``network-snapshot-*.pkl`` (EDM's training loop format: a dict with ``ema``,
        ``loss_fn``, ``augment_pipe``, ``dataset_kwargs``) or a pickle of an EDM network alone.
      dtype: compute dtype of the network (``jnp.bfloat16`` / ``float16`` for EDM's ``use_fp16``).
      precision: ``jax.lax.Precision`` of convolutions and matmuls.

    Returns:
      ``(module, params, info)``: the :mod:`scire_jax.models.edm` module (NHWC), its ``params`` tree
      (float32 numpy) and ``info`` with ``class_name``, ``kwargs`` (EDM constructor kwargs),
      ``network_class``, ``network_kwargs``, ``attributes`` (``sigma_min``, ``sigma_max``, ...),
      ``schedule_mapping`` / ``native_schedule_mapping`` (:func:`schedule_mapping` with ``kind="edm"`` /
      ``"native"``; ``None`` for a bare network),
      ``module_src_sha256``, ``module_src_known``, ``top_level_keys``, ``loss_fn_class``,
      ``augment_pipe_class`` and ``dataset_kwargs``.

    Raises:
      ValueError: (one line, naming the file) for any global outside the allow-list, a truncated or
        corrupt file, an ``ema`` that is not an EDM network of known classes, a ``module_src`` that is
        not EDM's ``training/networks.py``, or weights that do not match the recorded configuration.
    """
    data = read_edm_pickle(path)
    try:
        if isinstance(data, dict):
            if "ema" not in data:
                raise _Refused(f"top-level dict without 'ema' (keys {sorted(map(str, data))[:6]})")
            ema = data["ema"]
        else:
            ema = data
        if not isinstance(ema, PersistentRecord):
            raise _Refused(f"ema is a {type(ema).__name__}, not an EDM persistent object")
        if ema.class_name not in _TOP_CLASSES:
            raise _Refused(f"ema is of unknown class {ema.class_name!r} (known: {sorted(_TOP_CLASSES)})")
        _check_module_src(ema)
        kwargs = _init_kwargs(ema)
        state_dict: Dict[str, np.ndarray] = {}
        _collect_state_dict(ema, "", ema.module_src, state_dict)
        if not state_dict:
            raise _Refused(f"ema ({ema.class_name}) holds no parameters")
        if ema.class_name in edm.PRECOND_CLASSES:
            model = ema.state["_modules"].get("model")
            if not isinstance(model, PersistentRecord) or model.class_name not in edm.NETWORK_CLASSES:
                raise _Refused(f"{ema.class_name} without an EDM network as its model")
            expected_type = kwargs.get("model_type", edm.DEFAULT_MODEL_TYPE[ema.class_name])
            if model.class_name != expected_type:
                raise _Refused(f"model is a {model.class_name} but model_type says {expected_type!r}")
            network_class, network_kwargs = model.class_name, _init_kwargs(model)
        else:
            network_class, network_kwargs = ema.class_name, kwargs
        attributes = {k: ema.state[k] for k in _PRECOND_ATTRIBUTES
                      if k in ema.state and isinstance(ema.state[k], (int, float, bool))}
    except _Refused as error:
        raise _fail(path, str(error)) from None
    try:
        module = edm.from_edm_kwargs(ema.class_name, kwargs, dtype=dtype, precision=precision)
        params = params_from_state_dict(module, state_dict, source="the pickled weights")
    except ValueError as error:
        raise _fail(path, str(error)) from None
    except Exception as error:  # noqa: BLE001 - recorded kwargs are untrusted data: any failure is a refusal
        raise _fail(path, f"unusable constructor kwargs ({type(error).__name__}: {error})") from None

    mapping = native = None
    if ema.class_name in edm.PRECOND_CLASSES:
        try:
            mapping = schedule_mapping(ema.class_name, attributes)
        except (KeyError, ValueError) as error:
            raise _fail(path, f"cannot map {ema.class_name} onto a schedule ({error})") from None
        try:
            native = schedule_mapping(ema.class_name, attributes, u=state_dict.get("u"), kind="native")
        except (KeyError, ValueError):
            native = None  # e.g. iDDPM with M != 1000: only the EDM mapping applies

    def class_of(value):
        return value.class_name if isinstance(value, PersistentRecord) else (None if value is None else
                                                                            type(value).__name__)

    digest = hashlib.sha256(ema.module_src.encode("utf-8")).hexdigest()
    info = {
        "file": str(path),
        "class_name": ema.class_name,
        "kwargs": kwargs,
        "network_class": network_class,
        "network_kwargs": network_kwargs,
        "attributes": attributes,
        "schedule_mapping": mapping,
        "native_schedule_mapping": native,
        "module_src_sha256": digest,
        "module_src_known": digest in KNOWN_NETWORKS_SRC_SHA256,
        "top_level_keys": sorted(data) if isinstance(data, dict) else None,
        "loss_fn_class": class_of(data.get("loss_fn")) if isinstance(data, dict) else None,
        "augment_pipe_class": class_of(data.get("augment_pipe")) if isinstance(data, dict) else None,
        "dataset_kwargs": data.get("dataset_kwargs") if isinstance(data, dict) else None,
    }
    return module, params, info
