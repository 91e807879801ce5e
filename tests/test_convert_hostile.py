"""Small hostile checkpoint files end in one clear ValueError before anything large is read or allocated (issue 25,
item 3).

Each file is a few KB to a few MB on disk but declares gigabytes: zip members whose declared or inflated size is
over the caps, tensor views with stride 0 or past the end of their storage, storages larger than their
archive member, a pickle whose memo index makes the C unpickler allocate a huge table. `_refused` runs the
load and checks the message (it names the file and the member or tensor key) and that no zip read, tensor or
loaded storage on the way was over `ALLOCATION_CAP` (`_allocations` records them). How long a refusal takes and
the peak memory it needs: examples/benchmark_safe_loading.py.
"""

from __future__ import annotations

import contextlib
import io
import pickle
import re
import struct
import zipfile
from collections import OrderedDict
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path

import pytest
import torch

from weclip_hf.conversion import convert_official_checkpoint, load_official_checkpoint
from weclip_hf.conversion.checkpoint_file import MAX_WEIGHT_NESTING, model_state_dict
from weclip_hf.safe_loading import MAX_MEMBER_BYTES
from weclip_hf.safe_loading.caps import MAX_CONTAINER_NESTING
from weclip_hf.safe_loading.pickle_specs import SpecUnpickler

# what one refusal may allocate: no zip read (the CRC check reads members in 1 MiB chunks) and no tensor above this
ALLOCATION_CAP = 2 * 2**20

# ---- recording what a load allocates -----------------------------------------------------------------


def _nbytes(obj) -> list[int]:
    """The bytes of every distinct tensor storage in ``obj`` (dicts, lists, tuples of tensors)."""
    seen, sizes, stack = set(), [], [obj]
    while stack:
        item = stack.pop()
        if isinstance(item, torch.Tensor):
            storage = item.untyped_storage()
            if storage.data_ptr() not in seen:
                seen.add(storage.data_ptr())
                sizes.append(storage.nbytes())
        elif isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list | tuple):
            stack.extend(item)
    return sizes


@contextlib.contextmanager
def _allocations() -> Iterator[list[tuple[str, int]]]:
    """Record (what, bytes) of each large buffer a load can make: every read of a zip member (its bytes), every
    tensor `torch.empty` makes or `Tensor.clone` copies (the TorchScript path's storages), and the storages of what
    `torch.load` returns (the torch.save path). The pickle's parsing is covered by its own checks (memo, lengths)."""
    recorded: list[tuple[str, int]] = []
    read, empty, clone, load = zipfile.ZipExtFile.read, torch.empty, torch.Tensor.clone, torch.load

    def recording_read(self, *args, **kwargs):
        data = read(self, *args, **kwargs)
        recorded.append((f"zip read of {self.name}", len(data)))
        return data

    def recording_empty(*args, **kwargs):
        tensor = empty(*args, **kwargs)
        recorded.append(("torch.empty", tensor.nbytes))
        return tensor

    def recording_clone(self, *args, **kwargs):
        recorded.append(("Tensor.clone", self.nbytes))
        return clone(self, *args, **kwargs)

    def recording_load(*args, **kwargs):
        loaded = load(*args, **kwargs)
        recorded.extend(("torch.load", n) for n in _nbytes(loaded))
        return loaded

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(zipfile.ZipExtFile, "read", recording_read)
        patch.setattr(torch, "empty", recording_empty)
        patch.setattr(torch.Tensor, "clone", recording_clone)
        patch.setattr(torch, "load", recording_load)
        yield recorded


def _refused(call: Callable[[], object], *names: str) -> str:
    """Run ``call``, which must raise one ValueError whose message contains every one of ``names``, without
    reading or allocating any buffer over `ALLOCATION_CAP` on the way; return the message."""
    with _allocations() as recorded, pytest.raises(ValueError) as caught:
        call()
    message = str(caught.value)
    for name in names:
        assert name in message, (name, message)
    large = [(what, size) for what, size in recorded if size > ALLOCATION_CAP]
    assert not large, f"allocated before the refusal: {large}"
    return message


def test_the_recording_sees_reads_and_tensors(tmp_path):
    """What `_refused` records: a large member read whole, a large tensor copied, made or loaded."""
    path = tmp_path / "large.pth"
    torch.save({"w": torch.zeros(2**20)}, path)  # a 4 MiB storage
    with _allocations() as recorded:
        with zipfile.ZipFile(path) as archive:
            archive.read("large/data/0")
        torch.ones(2**20).clone()
        torch.empty(2**20)
        torch.load(path, weights_only=True)
    assert [(what, size) for what, size in recorded if size] == [
        ("zip read of large/data/0", 4 * 2**20),
        ("Tensor.clone", 4 * 2**20),
        ("torch.empty", 4 * 2**20),
        ("torch.load", 4 * 2**20),
    ]

    def allocate_then_fail():
        torch.ones(2**20).clone()
        raise ValueError("allocated")

    with pytest.raises(
        AssertionError, match=r"allocated before the refusal: \[\('Tensor.clone', 4194304\)\]"
    ):
        _refused(allocate_then_fail, "allocated")


# ---- writing archives --------------------------------------------------------------------------------


class _Global:
    """A pickle reference to ``module.name``, written as a GLOBAL opcode without importing it."""

    def __init__(self, module: str, name: str):
        self.module, self.name = module, name

    def __call__(self, *args):  # pickle requires reduce functions to be callable
        raise AssertionError("never called")


class _Call:
    """``func(*args)`` in the pickle (REDUCE), then ``BUILD`` with ``state`` if given."""

    def __init__(self, func: _Global, *args, state=None):
        self.func, self.args, self.state = func, args, state


class _Storage:
    def __init__(self, key: str, numel: int, storage_type: str = "FloatStorage"):
        self.pid = ("storage", _Global("torch", storage_type), key, "cpu", numel)


class _Crafter(pickle._Pickler):
    """A pickler that writes `_Global`, `_Call` and `_Storage` as torch's picklers do."""

    def persistent_id(self, obj):
        return obj.pid if isinstance(obj, _Storage) else None

    def save(self, obj, save_persistent_id=True):
        if isinstance(obj, _Global):
            self.write(pickle.GLOBAL + f"{obj.module}\n{obj.name}\n".encode())
        elif isinstance(obj, _Call):
            self.save(obj.func)
            self.save(tuple(obj.args))
            self.write(pickle.REDUCE)
            if obj.state is not None:
                self.save(obj.state)
                self.write(pickle.BUILD)
        else:
            super().save(obj, save_persistent_id)


def _tensor(storage: _Storage, offset: int, size: tuple, stride: tuple) -> _Call:
    hooks = _Call(_Global("collections", "OrderedDict"))
    return _Call(_Global("torch._utils", "_rebuild_tensor_v2"), storage, offset, size, stride, False, hooks)


def _pickle(obj) -> bytes:
    buffer = io.BytesIO()
    _Crafter(buffer, protocol=2).dump(obj)
    return buffer.getvalue()


def _write_archive(path: Path, data_pkl: bytes, storages: dict[str, bytes], code: str | None = None) -> Path:
    """A torch.save archive (or, with ``code``, a TorchScript one) holding ``data.pkl`` and the storages."""
    root = path.stem
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr(f"{root}/data.pkl", data_pkl)
        for key, raw in storages.items():
            archive.writestr(f"{root}/data/{key}", raw)
        archive.writestr(f"{root}/byteorder", "little")
        archive.writestr(f"{root}/version", "3\n")
        if code is not None:
            archive.writestr(f"{root}/code/__torch__/tree.py", code)
            archive.writestr(f"{root}/constants.pkl", pickle.dumps((), protocol=2))
    return path


def _state_dict_archive(path: Path, tensors: dict[str, _Call], storages: dict[str, bytes]) -> Path:
    return _write_archive(path, _pickle(OrderedDict(tensors)), storages)


TREE_CODE = 'class Tree(Module):\n  __parameters__ = ["w", ]\n  __buffers__ = []\n  w : Tensor\n'


def _torchscript_archive(
    path: Path, weight: _Call, storages: dict[str, bytes], code: str = TREE_CODE
) -> Path:
    module = _Call(_Global("__torch__.tree", "Tree"), state={"training": False, "w": weight})
    return _write_archive(path, _pickle(module), storages, code)


def _rewrite(
    path: Path, out: Path, change: Callable[[str, bytes], bytes], compression=zipfile.ZIP_STORED
) -> Path:
    """A copy of the archive at ``path`` with each member's data passed through ``change(name, data)``."""
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(out, "w", compression) as dst:
        for info in src.infolist():
            dst.writestr(info.filename, change(info.filename, src.read(info)))
    return out


def _declare_size(path: Path, member: str, size: int, compressed: bool = False) -> None:
    """Patch the zip directory so that ``member`` declares ``size`` uncompressed bytes (the data stay small);
    ``compressed``: ``size`` bytes of (stored) data too."""
    raw = bytearray(path.read_bytes())
    entry = raw.find(b"PK\x01\x02")  # central directory entries
    while entry != -1:
        name_length = struct.unpack_from("<H", raw, entry + 28)[0]
        if raw[entry + 46 : entry + 46 + name_length].decode() == member:
            struct.pack_into("<I", raw, entry + 24, size)
            if compressed:
                struct.pack_into("<I", raw, entry + 20, size)
            path.write_bytes(bytes(raw))
            return
        entry = raw.find(b"PK\x01\x02", entry + 4)
    raise AssertionError(f"{member} not in {path}")


# ---- the crafted archives are real ones --------------------------------------------------------------


def test_crafted_archives_load_when_honest(tmp_path):
    values = torch.arange(12, dtype=torch.float32)
    storage = {"0": values.numpy().tobytes()}
    view = _tensor(_Storage("0", 12), 2, (2, 3), (1, 2))  # a strided view inside the storage
    plain = load_official_checkpoint(_state_dict_archive(tmp_path / "honest.pth", {"w": view}, storage))
    expected = torch.as_strided(values, (2, 3), (1, 2), 2)
    assert torch.equal(plain["w"], expected)
    scripted = load_official_checkpoint(_torchscript_archive(tmp_path / "honest.pt", view, storage))
    assert torch.equal(scripted["w"], expected)


# ---- zip directory -----------------------------------------------------------------------------------


def test_member_declaring_gigabytes_is_refused_before_reading(tmp_path):
    path = tmp_path / "huge_member.pth"
    torch.save({"w": torch.zeros(4)}, path)
    _declare_size(path, "huge_member/data/0", 0xF0000000)  # 3.75 GiB declared, 16 bytes on disk
    assert 0xF0000000 > MAX_MEMBER_BYTES
    _refused(partial(load_official_checkpoint, path), str(path), "'huge_member/data/0'", "max_member_bytes")


def test_zip_bomb_member_is_refused(tmp_path):
    saved = tmp_path / "saved.pth"
    torch.save({"w": torch.zeros(2**21)}, saved)  # 8 MiB of zeros deflate to ~8 KB
    bomb = _rewrite(saved, tmp_path / "bomb.pth", lambda name, data: data, zipfile.ZIP_DEFLATED)
    assert bomb.stat().st_size < 100_000
    _refused(partial(load_official_checkpoint, bomb), str(bomb), "'saved/data/0'", "zip bomb")
    # deflated members of real weights (ratio ~1.1) are read
    weights = torch.randn(2**19)
    torch.save({"w": weights}, saved)
    deflated = _rewrite(saved, tmp_path / "deflated.pth", lambda name, data: data, zipfile.ZIP_DEFLATED)
    assert torch.equal(load_official_checkpoint(deflated)["w"], weights)


def test_caps_passed_as_arguments(tmp_path):
    path = tmp_path / "small.pth"
    torch.save({"a": torch.randn(2**14), "b": torch.randn(2**14)}, path)  # two 64 KiB members
    assert load_official_checkpoint(path).keys() == {"a", "b"}
    _refused(
        partial(load_official_checkpoint, path, max_member_bytes=2**15),
        str(path),
        "'small/data/0'",
        "max_member_bytes",
    )
    _refused(partial(load_official_checkpoint, path, max_total_bytes=2**17), str(path), "max_total_bytes")
    # an OpenAI TorchScript archive is read under the caps given too (its reader took the default member cap)
    storage = torch.randn(2**14).numpy().tobytes()  # one 64 KiB member
    scripted = _torchscript_archive(
        tmp_path / "small.pt", _tensor(_Storage("0", 2**14), 0, (2**14,), (1,)), {"0": storage}
    )
    assert load_official_checkpoint(scripted).keys() == {"w"}
    _refused(
        partial(load_official_checkpoint, scripted, max_member_bytes=2**15), str(scripted), "max_member_bytes"
    )


def test_views_sharing_one_storage_count_against_the_total(tmp_path):
    path = tmp_path / "shared.pth"
    shared = torch.randn(2**14)  # one 64 KiB storage, 64 keys: 4 MiB once copied by the conversion
    torch.save({f"k{i}": shared for i in range(64)}, path)
    assert path.stat().st_size < 2**17
    _refused(
        partial(load_official_checkpoint, path, max_total_bytes=2**20), str(path), "max_total_bytes", "'k16'"
    )


def test_damaged_and_legacy_files_are_refused(tmp_path):
    path = tmp_path / "crc.pth"
    torch.save({"w": torch.ones(8)}, path)
    raw = bytearray(path.read_bytes())
    raw[raw.find(b"_rebuild_tensor_v2")] ^= 0xFF  # data.pkl no longer matches its CRC
    path.write_bytes(bytes(raw))
    _refused(partial(load_official_checkpoint, path), str(path), "damaged zip archive")
    legacy = tmp_path / "legacy.pth"
    torch.save({"w": torch.ones(8)}, legacy, _use_new_zipfile_serialization=False)
    _refused(partial(load_official_checkpoint, legacy), str(legacy), "not a zip archive")


def test_flipped_weight_bytes_are_refused_by_their_crc(tmp_path):
    path = tmp_path / "flipped.pth"
    weights = torch.arange(1024, dtype=torch.float32)
    torch.save({"encoder.visual.proj": weights}, path)
    raw = bytearray(path.read_bytes())
    start = raw.find(weights.numpy().tobytes())
    raw[start + 400 : start + 416] = b"\xff" * 16  # 4 weights become NaN; the zip directory is intact
    path.write_bytes(bytes(raw))
    assert (
        torch.load(path, weights_only=True)["encoder.visual.proj"].isnan().sum() == 4
    )  # torch.load: no error
    _refused(partial(load_official_checkpoint, path), str(path), "corrupted", "'flipped/data/0'", "CRC-32")
    _refused(partial(convert_official_checkpoint, path, tokenizer=object()), "corrupted", "'flipped/data/0'")


def _zero_crcs(path: Path, member: str | None = None) -> None:
    """Write 0 as the CRC-32 of ``member`` (default: every member) in its local header and the zip directory,
    as ``torch.serialization.set_crc32_options(False)`` writes them."""
    raw = bytearray(path.read_bytes())
    # local headers, then directory entries: (signature, offsets of the CRC-32, the name's length, the name)
    for signature, crc_at, length_at, name_at in ((b"PK\x03\x04", 14, 26, 30), (b"PK\x01\x02", 16, 28, 46)):
        entry = raw.find(signature)
        while entry != -1:
            name_length = struct.unpack_from("<H", raw, entry + length_at)[0]
            if member is None or raw[entry + name_at : entry + name_at + name_length].decode() == member:
                struct.pack_into("<I", raw, entry + crc_at, 0)
            entry = raw.find(signature, entry + 4)
    path.write_bytes(bytes(raw))


def test_a_checkpoint_saved_without_crc32s_is_read(tmp_path):
    """``torch.serialization.set_crc32_options(False)`` writes every CRC-32 as 0, and torch.load reads such a
    file: it was refused as a "damaged zip archive (Bad CRC-32 for file 'nocrc/data.pkl')". Now an archive
    (torch.save or TorchScript) whose CRC-32s are all 0 is read, there being nothing to check; one whose other
    members hold theirs is still refused."""
    weights = {"w": torch.arange(8.0), "h": torch.ones(3, dtype=torch.float16)}
    path = tmp_path / "nocrc.pth"
    before = torch.serialization.get_crc32_options()
    torch.serialization.set_crc32_options(False)
    try:
        torch.save(weights, path)
    finally:
        torch.serialization.set_crc32_options(before)
    with zipfile.ZipFile(path) as archive:
        assert {info.CRC for info in archive.infolist()} == {0}
    loaded = load_official_checkpoint(path)
    assert loaded.keys() == weights.keys() and all(torch.equal(loaded[k], v) for k, v in weights.items())
    view = _tensor(_Storage("0", 4), 0, (4,), (1,))
    scripted = _torchscript_archive(tmp_path / "nocrc.pt", view, {"0": torch.arange(4.0).numpy().tobytes()})
    _zero_crcs(scripted)
    assert torch.equal(load_official_checkpoint(scripted)["w"], torch.arange(4.0))
    one = tmp_path / "one.pth"
    torch.save(weights, one)
    _zero_crcs(one, "one/data.pkl")
    _refused(partial(load_official_checkpoint, one), str(one), "'one/data.pkl'")


def test_non_finite_weights_are_refused_and_named(tmp_path):
    weights = {"a": torch.ones(8), "b": torch.ones(4, 4).half(), "c": torch.ones(3), "n": torch.arange(3)}
    weights["a"][2] = float("nan")
    weights["b"][1, :2] = float("-inf")
    path = tmp_path / "nan.pth"
    torch.save(weights, path)  # a valid archive (CRCs match) of non-finite values
    message = _refused(
        partial(load_official_checkpoint, path),
        str(path),
        "'a' (1 NaN, 0 inf of 8",
        "'b' (0 NaN, 2 inf of 16",
    )
    assert "'c'" not in message and "'n'" not in message
    _refused(partial(convert_official_checkpoint, weights, tokenizer=object()), "'a' (1 NaN", "'b'")


@pytest.mark.parametrize("keep", [0.5, -30], ids=["first-half", "last-30-bytes-dropped"])
def test_truncated_archive_is_called_truncated_not_legacy(tmp_path, keep):
    saved = tmp_path / "whole.pth"
    torch.save({"w": torch.randn(4096)}, saved)
    raw = saved.read_bytes()
    path = tmp_path / "truncated.pth"
    path.write_bytes(raw[: int(len(raw) * keep)] if isinstance(keep, float) else raw[:keep])
    message = _refused(partial(load_official_checkpoint, path), str(path), "truncated or corrupted")
    assert "(legacy)" not in message
    legacy = tmp_path / "legacy.pth"
    torch.save({"w": torch.ones(8)}, legacy, _use_new_zipfile_serialization=False)
    message = _refused(partial(load_official_checkpoint, legacy), "not a zip archive", "legacy")
    assert "is truncated" not in message


# ---- tensor views ------------------------------------------------------------------------------------


def test_stride0_view_of_3e9_elements_is_refused(tmp_path):
    path = tmp_path / "expanded.pth"
    # 3e9 elements (12 GB once copied) over a storage of 4 bytes
    torch.save({"encoder.visual.class_embedding": torch.zeros(1).expand(3_000_000_000)}, path)
    assert path.stat().st_size < 10_000
    message = _refused(
        partial(load_official_checkpoint, path),
        str(path),
        "'encoder.visual.class_embedding'",
        "'expanded/data/0'",
        "3,000,000,000 elements",
    )
    assert "stride-0" in message
    _refused(
        partial(convert_official_checkpoint, path, tokenizer=object()), "'encoder.visual.class_embedding'"
    )
    scripted = _torchscript_archive(
        tmp_path / "expanded.pt", _tensor(_Storage("0", 1), 0, (3_000_000_000,), (0,)), {"0": bytes(4)}
    )
    _refused(
        partial(load_official_checkpoint, scripted), str(scripted), "'w'", "'expanded/data/0'", "stride-0"
    )


@pytest.mark.parametrize(
    "offset, size, stride, expected",
    [
        (2, (4,), (1,), "past the end of its storage"),  # extent 6 > 4
        (0, (2, 2), (1, 4), "past the end of its storage"),  # reaches element 5
        (0, (2,), (-1,), "negative"),
        (0, (-2,), (1,), "negative"),
        (-1, (2,), (1,), "negative"),
        (0, (2**62, 2), (1, 1), "past the end"),  # the extent is checked before the element count
        (0, (2, 3), (0, 1), "6 elements but its storage holds 4"),  # overlapping, larger than its storage
        (0, (2,), (1, 1), "malformed view"),
        (0, (2.0,), (1,), "malformed view"),
        (1, (4,), (1,), "reaches element 4, past the end"),  # one element past the end
        (5, (0,), (1,), "starts past the end"),  # an empty view, but past its storage
        (0, (0, 2**63), (1, 1), "malformed view"),  # over int64: torch could not build it
        (0, (1,) * 65, (1,) * 65, "65 dimensions"),
    ],
)
def test_views_outside_their_storage_are_refused(tmp_path, offset, size, stride, expected):
    view = _tensor(_Storage("0", 4), offset, size, stride)
    storages = {"0": bytes(16)}
    plain = _state_dict_archive(tmp_path / "views.pth", {"encoder.visual.proj": view}, storages)
    _refused(
        partial(load_official_checkpoint, plain),
        str(plain),
        "'encoder.visual.proj'",
        "'views/data/0'",
        expected,
    )
    scripted = _torchscript_archive(tmp_path / "views.pt", view, storages)
    _refused(partial(load_official_checkpoint, scripted), str(scripted), "'w'", "'views/data/0'", expected)


def test_storage_larger_than_its_member_is_refused(tmp_path):
    saved = tmp_path / "saved.pth"
    torch.save({"decoder.linear_pred.weight": torch.randn(16, 16)}, saved)
    path = _rewrite(
        saved, tmp_path / "short.pth", lambda name, data: data[:16] if name.endswith("data/0") else data
    )
    _refused(
        partial(load_official_checkpoint, path),
        str(path),
        "'decoder.linear_pred.weight'",
        "'saved/data/0'",
        "256 float32 elements",
        "the member holds 16 bytes",
    )
    # a storage declaring 3e9 elements (12 GB) over 16 bytes
    huge = _state_dict_archive(
        tmp_path / "huge.pth", {"w": _tensor(_Storage("0", 3_000_000_000), 0, (4,), (1,))}, {"0": bytes(16)}
    )
    _refused(
        partial(load_official_checkpoint, huge), str(huge), "'w'", "'huge/data/0'", "3,000,000,000 float32"
    )
    missing = _state_dict_archive(
        tmp_path / "missing.pth", {"w": _tensor(_Storage("7", 4), 0, (4,), (1,))}, {}
    )
    _refused(partial(load_official_checkpoint, missing), str(missing), "'w'", "'missing/data/7'", "missing")


# ---- pickle and code ---------------------------------------------------------------------------------


def test_pickle_memo_index_bomb_is_refused(tmp_path, monkeypatch):
    # LONG_BINPUT 0x0fffffff: the C unpickler would allocate a 2**28-entry memo table (2 GiB) for 10 bytes
    path = _write_archive(tmp_path / "memo.pth", b"\x80\x02Nr\xff\xff\xff\x0f.", {})
    unpickled = []
    load = SpecUnpickler.load
    monkeypatch.setattr(SpecUnpickler, "load", lambda self: unpickled.append(self) or load(self))
    _refused(partial(load_official_checkpoint, path), str(path), "'memo/data.pkl'", "memo index")
    assert unpickled == []  # refused by the opcode check, before the C unpickler reads the pickle


def test_pickle_with_a_huge_declared_length_is_refused(tmp_path):
    # BINUNICODE8 declaring 2**40 bytes over 4 bytes of data
    path = _write_archive(tmp_path / "length.pth", b"\x80\x04\x8d" + struct.pack("<Q", 2**40) + b"abcd.", {})
    _refused(partial(load_official_checkpoint, path), str(path), "'length/data.pkl'", "not a valid pickle")


def test_oversized_pickle_or_code_member_is_refused(tmp_path):
    big = tmp_path / "big.pth"
    _write_archive(big, b"\x80\x02N." + b"\x00" * (9 * 2**20), {})  # 9 MiB data.pkl (real ones: < 1 MB)
    _refused(partial(load_official_checkpoint, big), str(big), "'big/data.pkl'")
    view = _tensor(_Storage("0", 4), 0, (4,), (1,))
    code = _torchscript_archive(tmp_path / "code.pt", view, {"0": bytes(16)}, TREE_CODE + "#" * (9 * 2**20))
    _refused(partial(load_official_checkpoint, code), str(code), "'code/code/__torch__/tree.py'")


def test_code_that_would_backtrack_is_read_in_linear_time(tmp_path):
    # a class body ending in a 4 MiB line of spaces: the old pattern `[ \t]+.*\n` took quadratic time on it
    code = TREE_CODE + " " * 2**22
    path = _torchscript_archive(
        tmp_path / "spaces.pt", _tensor(_Storage("0", 4), 0, (4,), (1,)), {"0": bytes(16)}, code
    )
    # read (the class's names found past the line); its time at n and 2n spaces: examples/benchmark_safe_loading.py
    assert torch.equal(load_official_checkpoint(path)["w"], torch.zeros(4))


def test_member_that_inflates_to_less_than_its_directory_declares(tmp_path):
    view = _tensor(_Storage("0", 16), 0, (16,), (1,))  # 64 bytes declared
    for path in (
        _torchscript_archive(tmp_path / "short.pt", view, {"0": bytes(range(48))}),
        _state_dict_archive(tmp_path / "short.pth", {"w": view}, {"0": bytes(range(48))}),
    ):
        deflated = _rewrite(
            path, tmp_path / f"deflated{path.suffix}", lambda name, data: data, zipfile.ZIP_DEFLATED
        )
        _declare_size(deflated, "short/data/0", 64)  # 48 bytes inflate, with their true CRC
        # read here (TorchScript): the member is named; read by torch.load: torch's miniz error names the record
        _refused(partial(load_official_checkpoint, deflated), str(deflated), "data/0")


def test_files_that_are_no_checkpoint_are_named_for_what_they_are(tmp_path):
    """An empty file, a web page saved in place of a download, text, a folder: each is named for what it is (all
    were called legacy pickles, the folder missing); a legacy pickle still is one."""
    cases = {
        "empty.pth": (b"", "the file is empty \\(0 bytes\\)"),
        "page.pth": (b"\n  <!DOCTYPE html><html><body>Sign in</body></html>", "an HTML or XML page"),
        "notes.pth": (b"weights: see the release page\n", "neither a torch.save zip archive"),
        "bom.pth": (b"\xef\xbb\xbf<html><body>quota exceeded</body></html>", "an HTML or XML page"),
        "lfs.pth": (
            b"version https://git-lfs.github.com/spec/v1\noid sha256:0\nsize 599\n",
            "a Git LFS pointer",
        ),
    }
    for name, (content, expected) in cases.items():
        (tmp_path / name).write_bytes(content)
        with pytest.raises(ValueError, match=expected):
            load_official_checkpoint(tmp_path / name)
    legacy = tmp_path / "legacy.pth"
    torch.save({"w": torch.ones(2)}, legacy, _use_new_zipfile_serialization=False)
    with pytest.raises(ValueError, match="legacy \\(pre-1.6\\) torch.save pickle"):
        load_official_checkpoint(legacy)
    with pytest.raises(
        ValueError, match="is a folder: pass the checkpoint file itself \\(this folder holds .*legacy.pth"
    ):
        load_official_checkpoint(tmp_path)


def test_a_safetensors_file_of_the_official_weights_is_read(tmp_path):
    """The official weights re-saved as safetensors load as the torch.save file does (the safe format); a damaged
    one is named."""
    from safetensors.torch import save_file

    state = OrderedDict(
        [("encoder.visual.proj", torch.randn(4, 3)), ("decoder.linear_pred.bias", torch.randn(2))]
    )
    save_file(dict(state), tmp_path / "weclip.safetensors")
    loaded = load_official_checkpoint(tmp_path / "weclip.safetensors")
    # a folder is named with the checkpoints it holds, a safetensors file among them
    with pytest.raises(ValueError, match=r"is a folder: .*\(this folder holds weclip\.safetensors\)"):
        load_official_checkpoint(tmp_path)
    assert loaded.keys() == state.keys() and all(torch.equal(loaded[k], v) for k, v in state.items())
    raw = (tmp_path / "weclip.safetensors").read_bytes()
    for name, cut in (("cut_data", len(raw) - 8), ("cut_header", 30)):  # in the tensors, in the JSON header
        (tmp_path / f"{name}.safetensors").write_bytes(raw[:cut])
        with pytest.raises(ValueError, match="damaged safetensors file"):
            load_official_checkpoint(tmp_path / f"{name}.safetensors")


# ---- the zip directory, the pickle and TorchScript's module tree: more refusals -------------------------------


def test_zip_directories_that_torch_never_writes_are_refused(tmp_path):
    """A member named twice (which copy a reader takes is its own choice), a method other than stored or deflated,
    a stored member declaring more bytes than it holds, and data said to lie past the end of the file."""
    saved = tmp_path / "saved.pth"
    torch.save({"w": torch.arange(4.0)}, saved)
    twice = _rewrite(saved, tmp_path / "twice.pth", lambda name, data: data)
    with zipfile.ZipFile(twice, "a") as archive, pytest.warns(UserWarning, match="Duplicate name"):
        archive.writestr("saved/data/0", bytes(16))
    _refused(partial(load_official_checkpoint, twice), str(twice), "'saved/data/0' appears twice")
    lzma = _rewrite(saved, tmp_path / "lzma.pth", lambda name, data: data, zipfile.ZIP_LZMA)
    _refused(partial(load_official_checkpoint, lzma), str(lzma), "compression method 14")
    longer = _rewrite(saved, tmp_path / "longer.pth", lambda name, data: data)
    _declare_size(longer, "saved/data/0", 64)  # 16 bytes stored
    _refused(
        partial(load_official_checkpoint, longer), "'saved/data/0' is stored uncompressed but declares 64"
    )
    past = _rewrite(saved, tmp_path / "past.pth", lambda name, data: data)
    size = past.stat().st_size - 100  # under the file's size, but past its end from the member's offset
    _declare_size(past, "saved/data/0", size, compressed=True)
    _refused(partial(load_official_checkpoint, past), str(past), "'saved/data/0'", "past the end of the file")


def test_a_plain_archive_naming_torchscript_classes_is_refused(tmp_path):
    """Classes of TorchScript code (``__torch__.*``) and its list builders are stubbed only in a TorchScript
    archive, which is read here; a torch.save archive naming them needs code to load, and is refused as such."""
    for module, name in (("__torch__.payload", "Payload"), ("torch.jit._pickle", "build_intlist")):
        path = _write_archive(tmp_path / "named.pth", _pickle({"w": _Call(_Global(module, name), [1])}), {})
        _refused(partial(load_official_checkpoint, path), str(path), f"needs code to load ({module}.{name})")


def test_torch_load_reads_the_checked_archive_with_weights_only(tmp_path, monkeypatch):
    """The restricted unpickler is the first guard; torch.load's own weights-only unpickler is the second."""
    path = tmp_path / "plain.pth"
    torch.save({"w": torch.ones(2)}, path)
    calls, load = [], torch.load
    monkeypatch.setattr(torch, "load", lambda *args, **kwargs: calls.append(kwargs) or load(*args, **kwargs))
    assert torch.equal(load_official_checkpoint(path)["w"], torch.ones(2))
    assert [call["weights_only"] for call in calls] == [True]


def test_memo_indices_out_of_sequence_by_one_are_refused(tmp_path):
    # BINPUT 1 as the pickle's first memo entry (0 expected)
    path = _write_archive(tmp_path / "memo.pth", b"\x80\x02Nq\x01.", {})
    _refused(partial(load_official_checkpoint, path), "memo index 1 out of sequence (0 objects memoised")


def test_a_tensor_that_no_key_reaches_is_checked_too(tmp_path):
    """A tensor the pickle builds where no dict value or list item holds it (here: a dict key) is still a view
    torch.load builds: checked as ``<unnamed tensor i>``."""
    outside = _tensor(_Storage("0", 4), 2, (4,), (1,))  # past the end of its storage
    path = _write_archive(tmp_path / "key.pth", _pickle({outside: 1}), {"0": bytes(16)})
    _refused(partial(load_official_checkpoint, path), str(path), "'<unnamed tensor 0>'", "past the end")


def _scripted(path: Path, state: object, storages: dict[str, bytes], code: str = TREE_CODE) -> Path:
    """A TorchScript archive whose data.pkl is ``state`` (a module: `_Call` of a ``__torch__`` class)."""
    return _write_archive(path, _pickle(state), storages, code)


def test_torchscript_archives_read_only_declared_weights_of_declared_modules(tmp_path):
    """A tensor attribute that its class does not declare as a parameter or buffer (an attention mask) is not a
    weight; a module of an undeclared class, a data.pkl that holds no module, and a module without weights are
    refused as unreadable, each naming the file."""
    values = {"0": torch.arange(4.0).numpy().tobytes()}
    view = _tensor(_Storage("0", 4), 0, (4,), (1,))
    tree = _Global("__torch__.tree", "Tree")
    masked = _scripted(tmp_path / "mask.pt", _Call(tree, state={"w": view, "attn_mask": view}), values)
    assert list(load_official_checkpoint(masked)) == ["w"]
    other = _Call(_Global("__torch__.tree", "Other"), state={"w": view})
    undeclared = _scripted(tmp_path / "undeclared.pt", other, values)
    _refused(partial(load_official_checkpoint, undeclared), str(undeclared), "no class declaration for")
    plain = _scripted(tmp_path / "plain.pt", {"w": view}, values)
    _refused(partial(load_official_checkpoint, plain), str(plain), "it does not hold a module")
    empty_code = "class Tree(Module):\n  __parameters__ = []\n  __buffers__ = []\n"
    empty = _scripted(tmp_path / "empty.pt", _Call(tree, state={"w": view}), values, empty_code)
    _refused(
        partial(load_official_checkpoint, empty), str(empty), "no tensors found in the TorchScript archive"
    )


def test_torchscript_views_sharing_one_storage_are_counted_before_copying(tmp_path):
    """TorchScript weights are copied out of their storages: the views' total is checked before the first copy."""
    names = [f"k{i}" for i in range(64)]
    declared = ", ".join(f'"{name}"' for name in names)
    code = f"class Tree(Module):\n  __parameters__ = [{declared}]\n  __buffers__ = []\n"
    view = _tensor(_Storage("0", 2**14), 0, (2**14,), (1,))  # 64 KiB, under 64 names: 4 MiB once copied
    module = _Call(_Global("__torch__.tree", "Tree"), state=dict.fromkeys(names, view))
    path = _scripted(tmp_path / "shared.pt", module, {"0": bytes(2**16)}, code)
    with _allocations() as recorded:
        _refused(
            partial(load_official_checkpoint, path, max_total_bytes=2**20), "the tensors declare more than"
        )
    assert not [what for what, _ in recorded if what == "Tensor.clone"]


def test_a_safetensors_file_over_the_total_cap_is_refused(tmp_path):
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2**12)}, tmp_path / "big.safetensors")
    _refused(
        partial(load_official_checkpoint, tmp_path / "big.safetensors", max_total_bytes=2**12),
        "big.safetensors",
        "exceeds the cap of 4,096 bytes",
    )


def _nested(inner, depth: int, key: str = "model"):
    """``inner`` under ``depth`` dicts of one ``key`` each, built without recursion."""
    for _ in range(depth):
        inner = {key: inner}
    return inner


def test_weights_nested_past_the_limit_are_refused_not_searched_recursively(tmp_path):
    """The weights entry is searched at most `MAX_WEIGHT_NESTING` entries deep: a dict given nesting it 5000 deep
    ended in a RecursionError (and took time quadratic in the depth), now in one ValueError naming the source."""
    weights = {"w": torch.zeros(2)}
    path = tmp_path / "deepest_read.pth"
    torch.save(_nested(weights, MAX_WEIGHT_NESTING), path)
    assert load_official_checkpoint(path).keys() == {"w"}
    torch.save(_nested(weights, MAX_WEIGHT_NESTING + 1), path)
    _refused(partial(load_official_checkpoint, path), str(path), f"nest more than {MAX_WEIGHT_NESTING} deep")
    with pytest.raises(ValueError, match=f"^given: its entries .* nest more than {MAX_WEIGHT_NESTING} deep"):
        model_state_dict(_nested(weights, 5000, "state_dict"), "given")


def test_a_pickle_nesting_containers_200000_deep_is_refused_in_linear_time(tmp_path):
    """A data.pkl of 1.6 MB nesting dicts 200,000 deep: naming its tensors built every key path, time quadratic in
    the depth (4 s here; an 8 MB one, under MAX_METADATA_BYTES, minutes), only to call it a training checkpoint
    whose weights "may be under 'm'"; now refused past `MAX_CONTAINER_NESTING` levels. Containers exactly that deep
    beside the weights are read."""
    level = pickle.EMPTY_DICT + pickle.BINUNICODE + struct.pack("<I", 1) + b"m"  # {"m": <next level>}
    deep = b"\x80\x02" + level * 200_000 + pickle.EMPTY_DICT + pickle.SETITEM * 200_000 + pickle.STOP
    path = _write_archive(tmp_path / "deep.pth", deep, {})
    _refused(
        partial(load_official_checkpoint, path), str(path), f"nest more than {MAX_CONTAINER_NESTING} deep"
    )
    view = _tensor(_Storage("0", 4), 0, (4,), (1,))
    for extra, read in ((0, True), (1, False)):
        beside = {"model": {"w": view}, "notes": _nested([], MAX_CONTAINER_NESTING - 2 + extra, "n")}
        path = _write_archive(tmp_path / f"beside{extra}.pth", _pickle(beside), {"0": bytes(16)})
        if read:
            assert load_official_checkpoint(path).keys() == {"w"}
        else:
            _refused(partial(load_official_checkpoint, path), str(path), "nest more than")


def test_a_fifo_or_link_loop_given_as_the_checkpoint_is_named_not_called_missing(tmp_path):
    """A FIFO or a link loop given as the checkpoint was reported as a checkpoint that "does not exist"; each is now
    a ValueError naming the file and what is there."""
    import os

    os.mkfifo(tmp_path / "fifo.pth")
    (tmp_path / "loop.pth").symlink_to("loop.pth")
    for name, problem in (
        ("fifo.pth", "it is a FIFO, socket or device"),
        ("loop.pth", "cannot be read (Too many"),
    ):
        with pytest.raises(ValueError, match=re.escape(f"{tmp_path / name}: {problem}")):
            load_official_checkpoint(tmp_path / name)
