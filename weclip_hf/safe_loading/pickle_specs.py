"""``data.pkl`` unpickled without reading a storage or rebuilding a tensor: the restricted `SpecUnpickler`
builds containers, each tensor as a `TensorSpec` (storage record, dtype, offset, shape, stride), and
(TorchScript) stub objects, and refuses any other global. Each view must lie inside its storage
(`check_view`), each storage inside its archive member (`check_specs`), all together within the total cap."""

from __future__ import annotations

import io
import math
import pickle
import pickletools
import zipfile
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .caps import _MAX_NDIM, MAX_ARCHIVE_BYTES, MAX_CONTAINER_NESTING, REDOWNLOAD, _size
from .zip_archive import _read_metadata

_STORAGE_DTYPES = {
    "HalfStorage": torch.float16, "FloatStorage": torch.float32, "DoubleStorage": torch.float64,
    "BFloat16Storage": torch.bfloat16, "LongStorage": torch.int64, "IntStorage": torch.int32,
    "ShortStorage": torch.int16, "CharStorage": torch.int8, "ByteStorage": torch.uint8,
    "BoolStorage": torch.bool,
}  # fmt: skip
_REBUILD_TENSOR = ("_rebuild_tensor", "_rebuild_tensor_v2")
_REBUILD_PARAMETER = ("_rebuild_parameter", "_rebuild_parameter_with_state")
_JIT_BUILDERS = (
    "build_intlist",
    "build_doublelist",
    "build_boollist",
    "build_tensorlist",
    "restore_type_tag",
)


@dataclass(frozen=True)
class StorageRef:
    """A storage record of the archive as ``data.pkl`` declares it: member ``data/<key>``, dtype, elements."""

    key: str
    dtype: torch.dtype
    numel: int


@dataclass(frozen=True, eq=False)
class TensorSpec:
    """A tensor as ``data.pkl`` declares it: a view (offset, shape, stride; in elements) of a storage."""

    storage: Any
    offset: Any
    size: Any
    stride: Any


def _tensor_spec(storage: Any, offset: Any, size: Any, stride: Any, *_: Any) -> TensorSpec:
    return TensorSpec(storage, offset, size, stride)


def check_view(where: str, storage_numel: int, offset: Any, size: Any, stride: Any) -> int:
    """Raise unless the view (in elements) lies inside a storage of ``storage_numel`` elements; return its
    number of elements.

    Refused: offset / shape / stride entries that are not non-negative 64-bit integers, more than 64
    dimensions, an extent (``offset + sum((size - 1) * stride) + 1``) past the end of the storage, and more
    elements than the storage holds (stride-0 or overlapping views, which copying would blow up).
    """
    sequences = isinstance(size, (tuple, list)) and isinstance(stride, (tuple, list))
    values = (offset, *size, *stride) if sequences else ()
    if not sequences or len(size) != len(stride) or not all(type(v) is int and v < 2**63 for v in values):
        raise ValueError(f"{where}: malformed view (offset {offset!r}, shape {size!r}, stride {stride!r}).")
    if len(size) > _MAX_NDIM:
        raise ValueError(f"{where}: {len(size)} dimensions (at most {_MAX_NDIM}).")
    view = f"view (offset {offset}, shape {tuple(size)}, stride {tuple(stride)})"
    if any(v < 0 for v in values):
        raise ValueError(f"{where}: negative offset, shape or stride in the {view}.")
    if 0 in size:
        if offset > storage_numel:
            raise ValueError(
                f"{where}: the {view} starts past the end of its storage of {storage_numel:,} elements."
            )
        return 0
    last = offset + sum((n - 1) * step for n, step in zip(size, stride))
    if last >= storage_numel:
        raise ValueError(
            f"{where}: the {view} reaches element {last:,}, past the end of its storage of {storage_numel:,} elements."
        )
    numel = math.prod(size)
    if numel > storage_numel:
        raise ValueError(
            f"{where}: the {view} declares {numel:,} elements but its storage holds {storage_numel:,}: a "
            "broadcast (stride-0) or overlapping view with more elements than its storage is refused."
        )
    return numel


class Stub:
    """Stands in for a TorchScript class: keeps the attributes the archive sets, runs nothing."""

    def __init__(self, qualified_name: str):
        self._qualified_name = qualified_name
        self._state: Any = None

    def __setstate__(self, state: Any) -> None:
        self._state = state


def _stub_class(qualified_name: str) -> type:
    class _Named(Stub):
        def __new__(cls, *args, **kwargs):
            obj = object.__new__(cls)
            Stub.__init__(obj, qualified_name)
            return obj

        def __init__(self, *args, **kwargs):  # BUILD/NEWOBJ must not run anything
            pass

    _Named.__qualname__ = _Named.__name__ = qualified_name.rsplit(".", 1)[-1]
    return _Named


class RefusedGlobal(pickle.UnpicklingError):
    """A pickle global that the restricted unpickler does not load (the message is its qualified name)."""


class _StorageType:
    def __init__(self, dtype: torch.dtype):
        self.dtype = dtype


class SpecUnpickler(pickle.Unpickler):
    """Restricted unpickler for ``data.pkl``: containers, tensors as `TensorSpec`, and (``torchscript=True``)
    stub objects for TorchScript classes. Any other global is refused; no storage is read.

    After `load`, ``specs`` lists every tensor the pickle built, in order.
    """

    def __init__(self, data: bytes, torchscript: bool):
        super().__init__(io.BytesIO(data))
        self._torchscript = torchscript
        self.specs: list[TensorSpec] = []

    def find_class(self, module: str, name: str) -> Any:
        if module == "torch._utils" and name in _REBUILD_TENSOR:
            return self._rebuild_tensor
        if module == "torch._utils" and name in _REBUILD_PARAMETER:
            return lambda data, *_: data
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(_STORAGE_DTYPES[name])
        if module == "collections" and name == "OrderedDict":
            return OrderedDict
        if self._torchscript and module.startswith("__torch__"):
            return _stub_class(f"{module}.{name}")
        if self._torchscript and module == "torch.jit._pickle" and name in _JIT_BUILDERS:
            return lambda x, *_: x
        raise RefusedGlobal(f"{module}.{name}")

    def _rebuild_tensor(self, *args: Any) -> TensorSpec:
        if len(args) < 4:
            raise pickle.UnpicklingError(f"a tensor rebuilt from {len(args)} arguments")
        spec = _tensor_spec(*args)
        self.specs.append(spec)
        return spec

    def persistent_load(self, pid: Any) -> StorageRef:
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise pickle.UnpicklingError(f"unexpected persistent id {pid!r}")
        storage_type, key, _location, numel = pid[1:]
        if not isinstance(storage_type, _StorageType):
            raise pickle.UnpicklingError(f"unexpected storage type {storage_type!r}")
        if not isinstance(key, str) or type(numel) is not int or numel < 0:
            raise pickle.UnpicklingError(f"malformed storage record {pid!r}")
        return StorageRef(key, storage_type.dtype, numel)


def _check_opcodes(data: bytes) -> None:
    """Parse the pickle's opcodes without building anything: every declared length must fit in the data, and
    memo indices must come in sequence (an index of 2**30 would make the C unpickler allocate an 8 GiB memo)."""
    puts = 0
    for opcode, arg, _ in pickletools.genops(data):
        if opcode.name in ("PUT", "BINPUT", "LONG_BINPUT"):
            if arg > puts:
                raise ValueError(f"memo index {arg} out of sequence ({puts} objects memoised so far)")
            puts += 1
        elif opcode.name == "MEMOIZE":
            puts += 1


def unpickle_specs(
    archive: zipfile.ZipFile, infos: dict[str, zipfile.ZipInfo], path: Path, torchscript: bool
) -> tuple[str, Any, list[TensorSpec]]:
    """Find ``<root>/data.pkl`` and unpickle it with `SpecUnpickler`: ``(root, object, specs)``.

    Raises:
        RefusedGlobal: a global that is not allowed (the message is its name).
        ValueError: no single ``<root>/data.pkl``, or a damaged pickle.
    """
    pickles = [n for n in infos if n.endswith("/data.pkl") and n.count("/") == 1]
    if len(pickles) != 1:
        raise ValueError(f"{path}: not a torch archive (no single <name>/data.pkl).")
    data = _read_metadata(archive, infos[pickles[0]], path)
    where = f"{path}: archive member {pickles[0]!r}"
    try:
        _check_opcodes(data)
    except (ValueError, EOFError) as err:
        raise ValueError(f"{where} is not a valid pickle ({err}).") from err
    unpickler = SpecUnpickler(data, torchscript)
    try:
        obj = unpickler.load()
    except RefusedGlobal:
        raise
    except (
        pickle.UnpicklingError,
        EOFError,
        ValueError,
        TypeError,
        AttributeError,
        IndexError,
        KeyError,
        RecursionError,
        MemoryError,
    ) as err:
        raise ValueError(f"{where} cannot be unpickled ({err!r}).") from err
    return pickles[0][: -len("data.pkl")], obj, unpickler.specs


def check_specs(
    named: list[tuple[str, TensorSpec]],
    infos: dict[str, zipfile.ZipInfo],
    root: str,
    path: Path,
    max_total_bytes: int = MAX_ARCHIVE_BYTES,
) -> None:
    """Check each tensor against its storage and each storage against its archive member, then the bytes of
    all tensors together against ``max_total_bytes``.

    Raises:
        ValueError: naming the file, the tensor key and the member.
    """
    total = 0
    for name, spec in named:
        ref = spec.storage
        if not isinstance(ref, StorageRef):
            raise ValueError(f"{path}: tensor {name!r} has no storage record in the archive (got {ref!r}).")
        member = f"{root}data/{ref.key}"
        where = f"{path}: tensor {name!r} (archive member {member!r})"
        itemsize = ref.dtype.itemsize
        if member not in infos:
            raise ValueError(f"{where}: the member is missing.")
        if ref.numel * itemsize > infos[member].file_size:
            raise ValueError(
                f"{where}: the storage declares {ref.numel:,} {str(ref.dtype).replace('torch.', '')} elements "
                f"({_size(ref.numel * itemsize)}) but the member holds {_size(infos[member].file_size)}."
            )
        total += check_view(where, ref.numel, spec.offset, spec.size, spec.stride) * itemsize
        if total > max_total_bytes:
            raise ValueError(
                f"{path}: the tensors declare more than {_size(max_total_bytes)} in all "
                f"(max_total_bytes; over the cap at {name!r})."
            )


def check_tensor_views(
    tensors: dict[str, torch.Tensor], path: Path | str, max_total_bytes: int = MAX_ARCHIVE_BYTES
) -> None:
    """`check_view` on loaded tensors (each view inside its storage, no more elements than the storage holds),
    and their bytes together at most ``max_total_bytes``."""
    total = 0
    for name, tensor in tensors.items():
        itemsize = tensor.element_size()
        storage_numel = tensor.untyped_storage().nbytes() // itemsize
        where = f"{path}: tensor {name!r}"
        numel = check_view(
            where, storage_numel, tensor.storage_offset(), tuple(tensor.shape), tensor.stride()
        )
        total += numel * itemsize
        if total > max_total_bytes:
            raise ValueError(
                f"{path}: the tensors hold more than {_size(max_total_bytes)} in all "
                f"(max_total_bytes; over the cap at {name!r})."
            )


def named_specs(obj: Any, specs: list[TensorSpec], path: Path | str) -> list[tuple[str, TensorSpec]]:
    """Every tensor of an unpickled ``torch.save`` object, named by its key path (``"state_dict.w"``); a
    tensor reachable under two keys is listed twice, one that no key reaches as ``<unnamed tensor i>``.

    Raises:
        ValueError: naming ``path``, where containers nest more than `MAX_CONTAINER_NESTING` deep (their key paths
            would take time quadratic in the depth to build).
    """
    named: list[tuple[str, TensorSpec]] = []
    stack: list[tuple[str, Any, int]] = [("", obj, 0)]
    seen: set[int] = set()
    while stack:
        name, value, depth = stack.pop()
        if isinstance(value, TensorSpec):
            named.append((name or "<top level>", value))
            continue
        if id(value) in seen or not isinstance(value, (dict, list, tuple)):
            continue
        if depth == MAX_CONTAINER_NESTING:
            raise ValueError(
                f"{path}: its dicts, lists and tuples nest more than {MAX_CONTAINER_NESTING} deep (at "
                f"{name[:80]!r}...): no checkpoint, whose state dicts nest a few levels. {REDOWNLOAD}"
            )
        seen.add(id(value))
        items = value.items() if isinstance(value, dict) else enumerate(value)
        stack.extend(reversed([(f"{name}.{k}" if name else str(k), v, depth + 1) for k, v in items]))
    reached = {id(spec) for _, spec in named}
    named += [(f"<unnamed tensor {i}>", s) for i, s in enumerate(specs) if id(s) not in reached]
    return named
