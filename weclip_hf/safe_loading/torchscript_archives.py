"""TorchScript archives (``torch.jit.save``, e.g. OpenAI's ``ViT-B-16.pt``), read here without compiling or
running their code: the parameters and buffers that the class declarations in ``code/`` name (read as text),
each storage checked against its CRC-32 as it is read (`read_torchscript_archive`; "the module docstring" is
`weclip_hf.safe_loading`'s)."""

from __future__ import annotations

import re
import zipfile
from collections import OrderedDict
from pathlib import Path

import torch

from .caps import MAX_ARCHIVE_BYTES, MAX_MEMBER_BYTES
from .pickle_specs import RefusedGlobal, Stub, TensorSpec, check_specs, unpickle_specs
from .zip_archive import _read_metadata, check_zip_directory, open_zip

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
