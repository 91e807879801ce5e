"""A simulated CUDA device for the tests, on a machine without a GPU: finds the device bugs that would crash the
first GPU user (a tensor made on the CPU meeting a CUDA tensor, ``.numpy()`` of a CUDA tensor, a branch taken
on CUDA only) while computing exactly what the CPU computes.

What it simulates:

- `CudaTensor`: a tensor that reports ``cuda:0`` (``is_cuda``, ``device.type == "cuda"``) and holds a real CPU
  tensor, ``elem``, which carries the values and the autograd graph (the wrapper itself never requires grad: a
  torch built without CUDA aborts the process when autograd records a CUDA tensor). Every torch function or
  tensor method on it runs on the CPU tensors (``__torch_function__``) and its tensor results are wrapped again.
  One that mixes it with a CPU tensor of one or more dimensions raises `SimulatedDeviceError` naming the function,
  as real CUDA refuses it (0-dim CPU tensors are scalars to CUDA, CPU indices are moved by torch's indexing,
  copies cross devices: all allowed). ``.numpy()`` raises as on CUDA; ``.item()``, ``.tolist()`` and ``.cpu()``
  (a copy) read the values back. A ``torch.autograd.Function`` written with ``forward(ctx, ...)`` (as the
  package's) runs on the wrappers (its forward and backward see CUDA tensors).
- What the scripts' stack asks of the device: ``torch.accelerator`` names CUDA (accelerate's device), pinned
  memory is the CPU tensor as it is, and the optimizers find no CUDA graph being captured.
- `simulated_cuda()`: a context in which a tensor asked for on ``cuda`` / ``cuda:0`` (``torch.zeros(...,
  device="cuda")``, ``torch.tensor(..., device=...)``, ``x.to("cuda")``, ``x.cuda()``, ``module.to("cuda")``) is such
  a wrapper, ``torch.cuda.is_available()`` is True with one device of compute capability 9.0, and the
  ``torch.cuda`` calls of the package and its scripts (synchronize, memory statistics, RNG state, the current
  device) are stubs. PAR's Triton kernels cannot run on the wrappers: `weclip_hf.par` takes its eager path there
  (the kernels are tested by tests/test_par_triton.py under Triton's interpreter).

What it does not simulate: kernels (every operator computes on the CPU, so CUDA's float rounding, TF32 and
nondeterministic atomics are not reproduced), streams and asynchrony (a device-side assert raises at once),
memory (no allocator, no out-of-memory), several devices (only ``cuda:0``), CUDA RNG streams (numbers drawn on
"cuda" are the CPU generator's), autocast on CUDA (its casts apply to CUDA tensors, and the values are CPU ones),
torch.compile, Triton, C++ code that makes tensors on its own (it sees the CPU values), and saving (``torch.save``
writes CPU tensors).
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator
from typing import Any
from unittest import mock

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten, tree_map

CUDA = torch.device("cuda", 0)
Tensor = torch.Tensor

# functions that take tensors of two devices on real CUDA: copies, and indexing (torch moves CPU indices)
CROSS_DEVICE = {
    Tensor.to,
    Tensor.cpu,
    Tensor.cuda,
    Tensor.copy_,
    Tensor.__getitem__,
    Tensor.__setitem__,
    Tensor.index_put_,
    Tensor.index_put,
    torch.index_put,
}
# the tensor attributes that give the wrapper's device rather than its CPU values'
DEVICE_ATTRIBUTES = {
    Tensor.device.__get__: lambda tensor: CUDA,
    Tensor.is_cuda.__get__: lambda tensor: True,
    Tensor.is_cpu.__get__: lambda tensor: False,
    Tensor.get_device: lambda tensor: 0,
}


class SimulatedDeviceError(RuntimeError):
    """A function mixed a (simulated) CUDA tensor with a CPU tensor, as real CUDA refuses."""


class CudaTensor(Tensor):
    """A tensor on the simulated ``cuda:0`` whose values (and autograd graph) are the CPU tensor ``elem``."""

    elem: Tensor

    @staticmethod
    def __new__(cls, elem: Tensor) -> CudaTensor:
        return Tensor._make_wrapper_subclass(
            cls, elem.shape, strides=elem.stride(), dtype=elem.dtype, layout=elem.layout, device=CUDA
        )

    def __init__(self, elem: Tensor) -> None:
        self.elem = elem

    def __tensor_flatten__(self) -> tuple[list[str], None]:
        """Marks the wrapper as traceable, so ``module.to`` swaps its parameters for wrappers."""
        return ["elem"], None

    @staticmethod
    def __tensor_unflatten__(inner: dict, meta: None, outer_size, outer_stride) -> CudaTensor:
        return CudaTensor(inner["elem"])

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in DEVICE_ATTRIBUTES:
            return DEVICE_ATTRIBUTES[func](args[0])
        if func in (Tensor.numpy, Tensor.__array__):
            raise TypeError(
                "can't convert cuda:0 device type tensor to numpy. Use Tensor.cpu() to copy the tensor to host "
                "memory first."
            )
        if func in (Tensor.to, Tensor.cpu, Tensor.cuda):
            return _moved(func, args, kwargs)
        if func is torch._has_compatible_shallow_copy_type:
            return False  # `module.to` then swaps a parameter for its wrapper
        if func not in CROSS_DEVICE:
            check_one_device(func, args, kwargs)
        # (torch function stays on: a backward that autograd runs from here computes on wrappers again)
        out = func(*tree_map(_unwrap, args), **tree_map(_unwrap, _on_cpu(kwargs)))
        if args and isinstance(args[0], CudaTensor) and out is args[0].elem:
            return args[0]  # an in-place method returns its tensor
        return out if _asks_for(kwargs, "cpu") else tree_map(_wrap, out)

    @classmethod
    def __torch_dispatch__(cls, func, types, args=(), kwargs=None):
        raise SimulatedDeviceError(
            f"{func} reached the dispatcher with a simulated CUDA tensor (not simulated)"
        )


def _unwrap(value: Any) -> Any:
    return value.elem if isinstance(value, CudaTensor) else value


def _wrap(value: Any) -> Any:
    return CudaTensor(value) if type(value) in (Tensor, torch.nn.Parameter) else value


def _asks_for(kwargs: dict, device_type: str) -> bool:
    """Whether a call's ``device`` keyword names ``device_type`` (of CUDA, only ``cuda:0`` is simulated)."""
    device = kwargs.get("device")
    if device is None or torch.device(device).type != device_type:
        return False
    if device_type == "cuda" and torch.device(device).index not in (None, 0):
        raise SimulatedDeviceError(f"{device} asked for: the simulated CUDA has one device, cuda:0")
    return True


def _on_cpu(kwargs: dict) -> dict:
    """``kwargs`` with a CUDA ``device`` replaced by the CPU, where the values are computed."""
    return {**kwargs, "device": torch.device("cpu")} if _asks_for(kwargs, "cuda") else kwargs


def check_one_device(func, args: tuple, kwargs: dict) -> None:
    """Raise `SimulatedDeviceError` where ``func`` takes a simulated CUDA tensor with a CPU tensor of 1+ dims."""
    tensors = [t for t in tree_flatten((args, kwargs))[0] if isinstance(t, Tensor)]
    host = [t for t in tensors if not isinstance(t, CudaTensor) and t.device.type == "cpu" and t.dim() > 0]
    if host and any(isinstance(t, CudaTensor) for t in tensors):
        shapes = ", ".join(str(tuple(t.shape)) for t in host)
        raise SimulatedDeviceError(
            f"{getattr(func, '__qualname__', func)}: a CUDA tensor met CPU tensor(s) of shape {shapes} (real CUDA "
            "raises 'Expected all tensors to be on the same device'); make the tensor on the input's device"
        )


def _moved(func, args: tuple, kwargs: dict) -> Tensor:
    """``Tensor.to`` / ``.cpu()`` / ``.cuda()`` of a plain or simulated CUDA tensor: a copy to the CPU is a plain
    tensor, a copy to CUDA a wrapper (a copy of a CPU tensor, as on real CUDA); other conversions keep the device."""
    tensor, rest = args[0], args[1:]
    copy = kwargs.get("copy", False)
    if func is Tensor.to:
        device, dtype, _, memory_format = torch._C._nn._parse_to(
            *rest, **{k: v for k, v in kwargs.items() if k != "copy"}
        )
    else:
        device, dtype, memory_format = torch.device("cpu" if func is Tensor.cpu else "cuda"), None, None
    values = _unwrap(tensor)
    with torch._C.DisableTorchFunctionSubclass():
        out = values.to(
            dtype=dtype or values.dtype, copy=copy, memory_format=memory_format or torch.preserve_format
        )
    on_cuda = isinstance(tensor, CudaTensor) if device is None else device.type == "cuda"
    if device is not None:
        _asks_for({"device": device}, device.type)
    if out is values and on_cuda != isinstance(tensor, CudaTensor):
        out = out.clone()  # a copy between devices
    if not on_cuda:
        return out
    return tensor if out is values else CudaTensor(out)


class _CudaFactories(TorchFunctionMode):
    """Tensors asked for on ``cuda`` (``device=`` of a factory, ``Tensor.to`` / ``.cuda()`` of a CPU tensor) made on
    the CPU and wrapped."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if any(isinstance(t, CudaTensor) for t in tree_flatten((args, kwargs))[0]):
            return func(*args, **kwargs)
        if func in (Tensor.to, Tensor.cuda):
            return _moved(func, args, kwargs)
        if _asks_for(kwargs, "cuda"):
            generator = kwargs.get("generator")
            if generator is not None and generator.device.type != "cuda":
                raise SimulatedDeviceError(f"{func.__name__}: a CPU generator draws no numbers on CUDA")
            return tree_map(_wrap, func(*args, **_on_cpu(kwargs)))
        return func(*args, **kwargs)


def _simulated_apply(original):
    """``torch.autograd.Function.apply`` that runs a Function given simulated CUDA tensors on their CPU values (its
    forward and backward see the wrappers again)."""

    @classmethod
    def apply(cls, *args, **kwargs):
        on_device = [isinstance(a, CudaTensor) for a in args]
        if not any(on_device):
            return original.__func__(cls, *args, **kwargs)
        return tree_map(
            _wrap, original.__func__(_on_device(cls, tuple(on_device)), *map(_unwrap, args), **kwargs)
        )

    return apply


@functools.cache
def _on_device(cls: type, on_device: tuple[bool, ...]) -> type:
    """``cls`` whose forward and backward take the wrappers of the arguments that were wrappers (and of the
    gradients) and give the CPU values back to autograd."""

    def forward(ctx, *args, **kwargs):
        wrapped = [CudaTensor(a) if w else a for a, w in zip(args, on_device)]
        return tree_map(_unwrap, cls.forward(ctx, *wrapped, **kwargs))

    def backward(ctx, *grads):
        return tree_map(_unwrap, cls.backward(ctx, *tree_map(_wrap, grads)))

    return type(cls.__name__, (cls,), {"forward": staticmethod(forward), "backward": staticmethod(backward)})


class _CudaDevice:
    """``torch.cuda.device(...)`` of the simulated device: a context that does nothing."""

    def __init__(self, device: Any = None) -> None:
        self.device = device

    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc) -> None:
        return None


def _cuda_stubs() -> dict[str, Any]:
    """The ``torch.cuda`` functions the package and its scripts call, as one idle device of capability 9.0."""
    rng_state = torch.get_rng_state
    return {
        "is_available": lambda: True,
        "device_count": lambda: 1,
        "current_device": lambda: 0,
        "get_device_capability": lambda device=None: (9, 0),
        "get_device_name": lambda device=None: "Simulated CUDA (CPU)",
        "is_bf16_supported": lambda *args, **kwargs: True,
        "synchronize": lambda device=None: None,
        "empty_cache": lambda: None,
        "set_device": lambda device: None,
        "device": _CudaDevice,
        "max_memory_allocated": lambda device=None: 0,
        "memory_allocated": lambda device=None: 0,
        "reset_peak_memory_stats": lambda device=None: None,
        "manual_seed": lambda seed: None,
        "manual_seed_all": lambda seed: None,
        "get_rng_state": lambda device="cuda": rng_state(),
        "get_rng_state_all": lambda: [rng_state()],
        "set_rng_state": lambda state, device="cuda": None,
        "set_rng_state_all": lambda states: None,
    }


class _IdleStream:
    """The current stream of the simulated device (the optimizers ask whether a CUDA graph is being captured)."""

    def is_capturing(self) -> bool:
        return False

    def synchronize(self) -> None:
        return None


def _accelerator_stubs() -> dict[str, Any]:
    """``torch.accelerator``'s answers for one CUDA device."""
    return {
        "current_accelerator": lambda check_available=False: torch.device("cuda"),
        "is_available": lambda: True,
        "device_count": lambda: 1,
        "current_device_index": lambda: 0,
        "synchronize": lambda device=None: None,
        "current_stream": lambda device=None: _IdleStream(),
    }


@contextlib.contextmanager
def simulated_cuda() -> Iterator[None]:
    """Within it, ``cuda`` is a simulated device (`CudaTensor`) whose operators compute on the CPU."""
    import weclip_hf.par

    function = torch.autograd.Function
    with contextlib.ExitStack() as stack:
        for name, stub in _cuda_stubs().items():
            stack.enter_context(mock.patch.object(torch.cuda, name, stub))
            if hasattr(torch.cuda.random, name):  # (transformers' Trainer saves the RNG states through it)
                stack.enter_context(mock.patch.object(torch.cuda.random, name, stub))
        for name, stub in _accelerator_stubs().items():  # what accelerate asks for its default device
            stack.enter_context(mock.patch.object(torch.accelerator, name, stub))
        # Triton cannot launch on the wrappers: PAR's eager path, as where Triton is missing
        stack.enter_context(mock.patch.object(weclip_hf.par, "triton_available", lambda tensor: False))
        stack.enter_context(
            mock.patch.object(function, "apply", _simulated_apply(function.__dict__["apply"]))
        )
        # pinned memory (a DataLoader's pin_memory=True, in its own thread): the CPU tensor as it is
        stack.enter_context(mock.patch.object(Tensor, "pin_memory", lambda tensor, device=None: tensor))
        stack.enter_context(_CudaFactories())
        yield


def to_cpu(value: Any) -> Any:
    """``value`` (a tensor, or a structure of them: a `ModelOutput`, tuple, list, dict) with its tensors copied to the
    CPU (detached), for comparison with a CPU run."""
    if isinstance(value, Tensor):
        return value.detach().cpu()
    if isinstance(value, dict):
        return {key: to_cpu(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(to_cpu(item) for item in value)
    return value
