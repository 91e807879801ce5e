"""Read torch checkpoint archives without running their code or trusting the sizes they declare.

(A safetensors file, the safe format, is read by safetensors itself: `read_safetensors_file`; a file that is none
of these formats is named for what its first bytes say it is: empty, a legacy pickle, a web page, a Git LFS
pointer.) The torch formats are zip archives: ``torch.save`` writes ``<root>/data.pkl`` and one member ``<root>/data/<key>``
per tensor storage; a TorchScript archive (``torch.jit.save``, e.g. OpenAI's ``ViT-B-16.pt``) adds
``<root>/code/`` and ``constants.pkl``. Nothing is read before these checks pass:

1. The zip directory (`check_zip_directory`): each member's declared uncompressed size is at most
   ``max_member_bytes``, their sum at most ``max_total_bytes``, compressed sizes fit in the file, members are
   stored or deflated and inflate at most `MAX_COMPRESSION_RATIO` : 1 (torch stores them uncompressed; a zip
   bomb inflates ~1000 : 1), and ``data.pkl`` / ``code/*.py``, read whole, are at most `MAX_METADATA_BYTES`.
2. ``data.pkl`` is unpickled by a restricted unpickler that reads no storage and rebuilds no tensor: a tensor
   is a `TensorSpec` (storage record, dtype, offset, shape, stride). Each storage must fit in its member,
   each view in its storage (`check_view`: shapes, strides and offset non-negative; the extent reached from
   offset, shape and stride inside the storage; no more elements than the storage holds, so no stride-0 or
   overlapping view can declare 3e9 elements over 4 bytes), and all views together at most
   ``max_total_bytes``.
3. Only then are storages read: by this module for TorchScript (no code compiled or run, each member
   checked against its CRC-32 as it is read), by ``torch.load(weights_only=True)`` for ``torch.save``
   archives once every member matches its CRC-32 (`check_crcs`; torch.load does not check them). An archive
   saved without CRC-32s (all 0: ``torch.serialization.set_crc32_options(False)``) has none to check
   (`skip_absent_crcs`).

What an official checkpoint file then holds (the model's weights among a training checkpoint's entries, no NaN)
is `weclip_hf.conversion.checkpoint_file`'s concern.

Every refusal is one ``ValueError`` that names the file and the archive member or tensor key.
"""

from __future__ import annotations

import io
import math
import pickle
import pickletools
import re
import zipfile
import zlib
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers.utils import logging as hf_logging

logger = hf_logging.get_logger(__name__)

# Caps on what an archive may declare, checked on its zip directory before any member is read. Real
# checkpoints: the official WeCLIP ViT-B/16 checkpoint is ~600 MB, OpenAI's ViT-L/14 TorchScript archive ~900 MB,
# and their largest member (a token embedding, 49408 x 768) under 200 MB even in float32.
MAX_ARCHIVE_BYTES = 4 * 2**30  # the uncompressed sizes of all members together
MAX_MEMBER_BYTES = 2 * 2**30  # the uncompressed size of one member (one tensor storage)
# data.pkl and code/*.py are read whole and parsed into Python objects (up to ~40 bytes of objects per pickle
# byte); real ones are under 1 MB.
MAX_METADATA_BYTES = 8 * 2**20
# torch writes members uncompressed (ratio 1), so a member above this ratio is a zip bomb, not a checkpoint;
# members under _RATIO_FLOOR bytes are not ratio-checked (a small zero tensor compresses well).
MAX_COMPRESSION_RATIO = 100
_RATIO_FLOOR = 2**20
_MAX_NDIM = 64
REDOWNLOAD = "Download or copy the checkpoint again."
_ZIP_MAGIC = b"PK\x03\x04"  # a zip archive starts with a local file header

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


def _size(n: int) -> str:
    unit = f" ({n / 2**30:.2f} GiB)" if n >= 2**30 else f" ({n / 2**20:.1f} MiB)" if n >= 2**20 else ""
    return f"{n:,} bytes{unit}"


# ---- 1. the zip directory ----------------------------------------------------------------------------


def check_zip_directory(
    archive: zipfile.ZipFile,
    path: Path,
    max_total_bytes: int = MAX_ARCHIVE_BYTES,
    max_member_bytes: int = MAX_MEMBER_BYTES,
) -> dict[str, zipfile.ZipInfo]:
    """Check the sizes every member declares against the caps and the file; return name -> `ZipInfo`.

    Raises:
        ValueError: naming the file and the first member over a cap (or the total).
    """
    file_bytes = path.stat().st_size
    total, names = 0, set()
    for info in archive.infolist():
        where = f"{path}: archive member {info.filename!r}"
        if info.filename in names:
            raise ValueError(f"{where} appears twice in the zip directory.")
        names.add(info.filename)
        if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
            raise ValueError(
                f"{where} uses zip compression method {info.compress_type}; torch archives "
                "store members uncompressed (only stored or deflated members are read)."
            )
        if info.header_offset + info.compress_size > file_bytes:
            raise ValueError(
                f"{where} declares {_size(info.compress_size)} of data at offset "
                f"{info.header_offset}, past the end of the file ({_size(file_bytes)})."
            )
        if info.file_size > max_member_bytes:
            raise ValueError(
                f"{where} declares {_size(info.file_size)} uncompressed, over the cap of "
                f"{_size(max_member_bytes)} per member (max_member_bytes)."
            )
        if info.compress_type == zipfile.ZIP_STORED and info.file_size != info.compress_size:
            raise ValueError(
                f"{where} is stored uncompressed but declares {_size(info.file_size)} for "
                f"{_size(info.compress_size)} of data."
            )
        if info.file_size > max(_RATIO_FLOOR, MAX_COMPRESSION_RATIO * info.compress_size):
            raise ValueError(
                f"{where} inflates {info.compress_size:,} bytes to {_size(info.file_size)} "
                f"(over {MAX_COMPRESSION_RATIO}:1): a zip bomb, not a torch archive, whose "
                "members are stored uncompressed."
            )
        total += info.file_size
        if total > max_total_bytes:
            raise ValueError(
                f"{path}: the archive members declare more than {_size(max_total_bytes)} "
                f"uncompressed in all (max_total_bytes; over the cap at {info.filename!r})."
            )
    return {info.filename: info for info in archive.infolist()}


@contextmanager
def open_zip(path: Path) -> Iterator[zipfile.ZipFile]:
    """``zipfile.ZipFile(path)``, with a damaged archive (directory or member) reported as a ValueError; one
    saved without CRC-32s is read without checking them (`skip_absent_crcs`)."""
    try:
        with zipfile.ZipFile(path) as archive:
            skip_absent_crcs(archive, path)
            yield archive
    except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError) as err:
        raise ValueError(f"{path}: damaged zip archive ({err}). {REDOWNLOAD}") from err


def skip_absent_crcs(archive: zipfile.ZipFile, path: Path) -> None:
    """Read an archive whose CRC-32s are all 0 without checking them: it was saved without them
    (``torch.serialization.set_crc32_options(False)``, which torch.load reads), and zipfile would call every
    member read damaged. A 0 among real CRC-32s is still checked (and refused)."""
    infos = archive.infolist()
    if infos and all(info.CRC == 0 for info in infos):
        # once: the archive is opened to tell its format, then to read it
        logger.warning_once(
            f"{path}: saved without CRC-32s (torch.serialization.set_crc32_options(False)): its bytes cannot "
            "be checked for corruption (NaN or infinite weights are still refused)."
        )
        for info in infos:
            # zipfile compares the bytes read with a CRC-32 that is not None only
            info.CRC = None


def check_crcs(archive: zipfile.ZipFile, path: Path) -> None:
    """Read every member once and compare it with the CRC-32 the archive stores for it (``testzip``):
    ``torch.load`` does not, and reads flipped bytes as weights.

    Raises:
        ValueError: naming the file and the first member whose bytes changed since they were written.
    """
    damaged = archive.testzip()
    if damaged is not None:
        raise ValueError(
            f"{path}: the file is corrupted: archive member {damaged!r} does not match the CRC-32 written "
            f"with it (its bytes changed after torch.save). {REDOWNLOAD}"
        )


def _read_metadata(archive: zipfile.ZipFile, info: zipfile.ZipInfo, path: Path) -> bytes:
    """A member that is read whole and parsed (``data.pkl``, ``code/*.py``), at most `MAX_METADATA_BYTES`."""
    if info.file_size > MAX_METADATA_BYTES:
        raise ValueError(
            f"{path}: archive member {info.filename!r} declares {_size(info.file_size)}; a pickle "
            f"or code file of a checkpoint is under {_size(MAX_METADATA_BYTES)}."
        )
    return archive.read(info)


# ---- 2. tensors as specs -----------------------------------------------------------------------------


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


def named_specs(obj: Any, specs: list[TensorSpec]) -> list[tuple[str, TensorSpec]]:
    """Every tensor of an unpickled ``torch.save`` object, named by its key path (``"state_dict.w"``); a
    tensor reachable under two keys is listed twice, one that no key reaches as ``<unnamed tensor i>``."""
    named: list[tuple[str, TensorSpec]] = []
    stack: list[tuple[str, Any]] = [("", obj)]
    seen: set[int] = set()
    while stack:
        name, value = stack.pop()
        if isinstance(value, TensorSpec):
            named.append((name or "<top level>", value))
            continue
        if id(value) in seen or not isinstance(value, (dict, list, tuple)):
            continue
        seen.add(id(value))
        items = value.items() if isinstance(value, dict) else enumerate(value)
        stack.extend(reversed([(f"{name}.{k}" if name else str(k), v) for k, v in items]))
    reached = {id(spec) for _, spec in named}
    named += [(f"<unnamed tensor {i}>", s) for i, s in enumerate(specs) if id(s) not in reached]
    return named


# ---- 3a. TorchScript archives: read here -------------------------------------------------------------

_CLASS_RE = re.compile(r"^class (\w+)\(Module\):\n((?:[ \t].*\n|\n)*)", re.M)  # linear: no nested repeats
_NAMES_RE = {
    kind: re.compile(rf"^[ \t]+{kind} = \[([^\]\n]*)\]", re.M) for kind in ("__parameters__", "__buffers__")
}


def _declared_state(
    archive: zipfile.ZipFile, infos: dict[str, zipfile.ZipInfo], root: str, path: Path
) -> dict[str, list[str]]:
    """Qualified TorchScript class name -> its parameter and buffer names, read as TEXT from the class
    declarations in ``<root>code/`` (``__parameters__ = [...]``, ``__buffers__ = [...]``); nothing is compiled."""
    declared = {}
    for name, info in infos.items():
        if not (name.startswith(root + "code/") and name.endswith(".py")):
            continue
        module = name[len(root + "code/") : -len(".py")].replace("/", ".")
        text = _read_metadata(archive, info, path).decode("utf-8", errors="replace")
        for match in _CLASS_RE.finditer(text):
            names = []
            for pattern in _NAMES_RE.values():
                found = pattern.search(match.group(2))
                names += re.findall(r'"([^"]+)"', found.group(1)) if found else []
            declared[f"{module}.{match.group(1)}"] = names
    return declared


def _collect_specs(module: Stub, declared: dict[str, list[str]], path: Path) -> list[tuple[str, TensorSpec]]:
    """Walk the stub module tree: the declared parameters and buffers (as ``state_dict()`` lists them),
    recursing into submodules; other tensor attributes (e.g. an attention mask) are not weights."""
    named: list[tuple[str, TensorSpec]] = []
    stack: list[tuple[str, Stub]] = [("", module)]
    seen: set[int] = set()
    while stack:
        prefix, obj = stack.pop()
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        state = obj._state
        if isinstance(state, tuple) and len(state) == 2 and isinstance(state[1], dict):
            state = state[1]
        if not isinstance(state, dict):
            continue
        if obj._qualified_name not in declared:
            raise _unreadable(path, f"no class declaration for {obj._qualified_name} in its code/")
        names = declared[obj._qualified_name]
        children = []
        for name, value in state.items():
            if isinstance(value, TensorSpec) and name in names:
                named.append((f"{prefix}{name}", value))
            elif isinstance(value, Stub):
                children.append((f"{prefix}{name}.", value))
        stack.extend(reversed(children))
    return named


def _materialise(
    archive: zipfile.ZipFile, root: str, named: list[tuple[str, TensorSpec]], path: Path
) -> dict[str, torch.Tensor]:
    """Read the (checked) storages, each once and dropped after its last tensor; copy each view out."""
    uses: dict[str, int] = {}
    for _, spec in named:
        uses[spec.storage.key] = uses.get(spec.storage.key, 0) + 1
    storages: dict[str, bytearray] = {}
    tensors: dict[str, torch.Tensor] = OrderedDict()
    for name, spec in named:
        ref = spec.storage
        member = f"{root}data/{ref.key}"
        if ref.key not in storages:
            storages[ref.key] = bytearray(archive.read(member))
        if len(storages[ref.key]) < ref.numel * ref.dtype.itemsize:  # inflated to less than declared
            raise ValueError(
                f"{path}: tensor {name!r} (archive member {member!r}): the member holds "
                f"{len(storages[ref.key]):,} bytes, fewer than its storage declares ({ref.numel * ref.dtype.itemsize:,})."
            )
        if 0 in spec.size:
            tensors[name] = torch.empty(tuple(spec.size), dtype=ref.dtype)
        else:
            flat = torch.frombuffer(storages[ref.key], dtype=ref.dtype, count=ref.numel)
            tensors[name] = torch.as_strided(flat, tuple(spec.size), tuple(spec.stride), spec.offset).clone()
        uses[ref.key] -= 1
        if not uses[ref.key]:
            del storages[ref.key]
    return tensors


def _unreadable(path: Path, reason: str) -> ValueError:
    return ValueError(
        f"{path}: cannot read this TorchScript archive safely ({reason}). Pass the CLIP weights as a "
        "transformers CLIP folder or Hub id instead (--clip openai/clip-vit-base-patch16)."
    )


def read_torchscript_archive(
    path: Path, max_total_bytes: int = MAX_ARCHIVE_BYTES, max_member_bytes: int = MAX_MEMBER_BYTES
) -> dict[str, torch.Tensor]:
    """The parameters and buffers of a TorchScript archive, read without compiling or running its code and
    only after every declared size is checked (see the module docstring)."""
    with open_zip(path) as archive:
        infos = check_zip_directory(archive, path, max_total_bytes, max_member_bytes)
        try:
            root, module, _ = unpickle_specs(archive, infos, path, torchscript=True)
        except RefusedGlobal as err:
            raise _unreadable(path, f"it references {err}, which this safe reader does not load") from err
        if not isinstance(module, Stub):
            raise _unreadable(path, "it does not hold a module")
        named = _collect_specs(module, _declared_state(archive, infos, root, path), path)
        check_specs(named, infos, root, path, max_total_bytes)
        tensors = _materialise(archive, root, named, path)
    if not tensors:
        raise ValueError(f"{path}: no tensors found in the TorchScript archive.")
    return tensors


def is_torchscript_archive(path: Path) -> bool:
    """Whether ``path`` is a zip archive written by ``torch.jit.save`` (it has ``constants.pkl`` or ``code/``)."""
    if not zipfile.is_zipfile(path):
        return False
    with open_zip(path) as archive:
        names = archive.namelist()
    return any(n.endswith("constants.pkl") for n in names) or any("/code/" in n for n in names)


# ---- 3b. torch.save archives: checked here, read by torch.load(weights_only=True) --------------------


def load_torch_archive(
    path: Path, max_total_bytes: int = MAX_ARCHIVE_BYTES, max_member_bytes: int = MAX_MEMBER_BYTES
) -> Any:
    """``torch.load(path, weights_only=True)`` on CPU, once the zip directory, ``data.pkl`` and every tensor
    it declares pass the checks of the module docstring (so torch inflates nothing unchecked).

    Raises:
        ValueError: a file that is not a zip archive (a legacy pre-1.6 ``torch.save`` pickle, whose sizes
            cannot be checked before loading; a truncated archive; an empty file, a web page, a Git LFS pointer or
            another format, each named: `_not_an_archive`), that needs code to load (it is never
            executed), whose bytes do not match their CRC-32 (a corrupted file), or that fails a check (naming
            the member or tensor key).
    """
    if not zipfile.is_zipfile(path):
        with open(path, "rb") as f:
            starts_like_zip = f.read(len(_ZIP_MAGIC)) == _ZIP_MAGIC
        if starts_like_zip:
            raise ValueError(
                f"{path}: the file is truncated or corrupted: it starts as a zip archive but its end (the zip "
                f"directory) is missing or unreadable; {path.stat().st_size:,} bytes on disk. {REDOWNLOAD}"
            )
        raise ValueError(f"{path}: {_not_an_archive(path)}")
    with open_zip(path) as archive:
        infos = check_zip_directory(archive, path, max_total_bytes, max_member_bytes)
        try:
            root, obj, specs = unpickle_specs(archive, infos, path, torchscript=False)
        except RefusedGlobal as err:
            raise ValueError(
                f"{path}: this pickle needs code to load ({err}) and was refused (it is never executed): only "
                "dicts and dense tensors are read. Re-save it as a plain state dict of tensors, e.g. "
                "torch.save(model.state_dict(), path), in a trusted environment."
            ) from err
        check_specs(named_specs(obj, specs), infos, root, path, max_total_bytes)
        check_crcs(archive, path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, ValueError, TypeError, KeyError) as err:
        raise ValueError(
            f"{path}: torch.load(weights_only=True) failed after the checks passed ({err})."
        ) from err


def _not_an_archive(path: Path) -> str:
    """What a file that is no zip archive is, from its first bytes, and what to do (for `load_torch_archive`)."""
    with open(path, "rb") as f:
        head = f.read(64)
    if not head:
        return f"the file is empty (0 bytes). {REDOWNLOAD}"
    if head[:1] == b"\x80":  # a pickle's PROTO opcode
        return (
            "not a zip archive but a legacy (pre-1.6) torch.save pickle, which is not read because the sizes it "
            "declares cannot be checked before loading. Re-save it with torch.save(state_dict, path) in a trusted "
            "environment."
        )
    if head.startswith(b"version https://git-lfs"):
        return (
            "a Git LFS pointer (a text file naming the checkpoint), not the checkpoint: fetch the file itself "
            "(git lfs pull, or the repository's download link)."
        )
    if head.removeprefix(b"\xef\xbb\xbf").lstrip()[:1] == b"<":  # after a UTF-8 byte-order mark, if any
        return (
            f"an HTML or XML page ({head.lstrip()[:40]!r}...), not a checkpoint: a download that returned a web "
            f"page (a sign-in, quota or confirmation page) instead of the file. {REDOWNLOAD}"
        )
    return (
        f"neither a torch.save zip archive, a TorchScript archive nor a safetensors file (it starts with "
        f"{head[:16]!r}). {REDOWNLOAD}"
    )


# ---- 3c. safetensors files: read by safetensors (no code, sizes checked by its loader) -----------------


# safetensors' own cap on the JSON header
_MAX_SAFETENSORS_HEADER = 100 * 2**20


def is_safetensors_file(path: Path) -> bool:
    """Whether ``path`` starts like a safetensors file: an 8-byte little-endian header length (at most
    safetensors' 100 MB), then a JSON object. (A zip archive's byte 8 is its compression method, never ``{``; a
    file cut short is left to `read_safetensors_file` to name.)"""
    with open(path, "rb") as f:
        head = f.read(9)
    return (
        len(head) == 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") <= _MAX_SAFETENSORS_HEADER
    )


def read_safetensors_file(path: Path, max_total_bytes: int = MAX_ARCHIVE_BYTES) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file (an official checkpoint re-saved in that format), at most
    ``max_total_bytes`` on disk."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    size = path.stat().st_size
    if size > max_total_bytes:
        raise ValueError(
            f"{path}: {_size(size)} exceeds the cap of {_size(max_total_bytes)} for a checkpoint."
        )
    try:
        return load_file(path, device="cpu")
    except (SafetensorError, OSError, RuntimeError, ValueError) as err:
        raise ValueError(f"{path}: damaged safetensors file ({err}). {REDOWNLOAD}") from err


__all__ = [
    "MAX_ARCHIVE_BYTES",
    "MAX_MEMBER_BYTES",
    "REDOWNLOAD",
    "check_tensor_views",
    "is_safetensors_file",
    "is_torchscript_archive",
    "load_torch_archive",
    "read_safetensors_file",
    "read_torchscript_archive",
]
