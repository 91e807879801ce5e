"""The benchmark's measuring instruments: synchronised timing and peak memory (`Bench`), FLOP counting
(`FlopCounter`), host syncs (`HostSyncFinder`), page faults (`minor_page_faults`) and each operator's share of a
profiled run (`operator_shares`)."""

from __future__ import annotations

import contextlib
import os
import statistics
import sys
import time
import traceback
from collections import Counter
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import flop_registry

import weclip_hf

PACKAGE_DIR = str(Path(weclip_hf.__file__).resolve().parent)
# examples/: the benchmark's own frames (these instruments, its workloads) are never a sync's library frame
BENCHMARK_DIR = str(Path(__file__).resolve().parents[1]) + os.sep


class Bench:
    """Synchronised timing (median of repeats after warm-up) and peak memory on one device."""

    def __init__(self, device: torch.device):
        self.device = device
        self.cuda = device.type == "cuda"

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)

    def times(self, fn, warmup: int, repeats: int) -> list[float]:
        for _ in range(warmup):
            fn()
        self.sync()
        out = []
        for _ in range(repeats):
            start = time.perf_counter()
            fn()
            self.sync()
            out.append(time.perf_counter() - start)
        return out

    def median(self, fn, warmup: int, repeats: int) -> float:
        return statistics.median(self.times(fn, warmup, repeats))

    def paired_medians(self, fns: dict, warmup: int, repeats: int) -> dict[str, float]:
        """Median seconds of each function, the runs interleaved (a, b, a, b, ...) so that a change of the
        machine's load moves every function's times alike and their ratio stays meaningful."""
        for fn in fns.values():
            for _ in range(warmup):
                fn()
        self.sync()
        times: dict[str, list[float]] = {name: [] for name in fns}
        for _ in range(repeats):
            for name, fn in fns.items():
                start = time.perf_counter()
                fn()
                self.sync()
                times[name].append(time.perf_counter() - start)
        return {name: statistics.median(values) for name, values in times.items()}

    @contextlib.contextmanager
    def peak_memory(self):
        """Yields a dict filled on exit with ``peak_bytes`` and ``method``."""
        result: dict = {}
        if self.cuda:
            self.sync()
            torch.cuda.reset_peak_memory_stats(self.device)
            yield result
            self.sync()
            result.update(
                peak_bytes=torch.cuda.max_memory_allocated(self.device), method="cuda max_memory_allocated"
            )
            return
        base = _proc_status_kib("VmRSS")
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # resets VmHWM (peak RSS) to the current RSS
            method = "CPU peak RSS growth (VmHWM after clear_refs)"
        except OSError:
            base = _maxrss_kib()
            method = "CPU ru_maxrss growth (lower bound)"
        yield result
        peak = _proc_status_kib("VmHWM") if method.startswith("CPU peak") else _maxrss_kib()
        result.update(peak_bytes=max(peak - base, 0) * 1024, method=method)


def _proc_status_kib(key: str) -> int:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return _maxrss_kib()


def _maxrss_kib() -> int:
    import resource

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss // 1024 if sys.platform == "darwin" else rss


# The CPU's fused SDPA kernels are missing from `flop_registry` (and have no decomposition): they would
# count 0. Their FLOPs are those of the CUDA flash kernels, whose formulas read the same leading
# arguments (query, key, value; backward: grad_out, query, key, value).
_aten = torch.ops.aten
_CPU_ATTENTION_FLOPS = {
    _aten._scaled_dot_product_flash_attention_for_cpu: flop_registry[
        _aten._scaled_dot_product_flash_attention
    ],
    _aten._scaled_dot_product_flash_attention_for_cpu_backward: flop_registry[
        _aten._scaled_dot_product_flash_attention_backward
    ],
}


class FlopCounter(TorchDispatchMode):
    """Counts FLOPs with the formulas of `torch.utils.flop_counter` (matmuls, convolutions, attention).

    The same counting as `FlopCounterMode` without its module tracker, whose backward hooks break
    `torch.autograd.grad` on a leaf tensor (the GradCAM target)."""

    def __init__(self):
        super().__init__()
        self.total = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        packet = func._overloadpacket
        formula = flop_registry.get(packet) or _CPU_ATTENTION_FLOPS.get(packet)
        if formula is None and func is not torch.ops.prim.device.default:
            with self:
                out = func.decompose(*args, **kwargs)
            if out is not NotImplemented:
                return out
        out = func(*args, **kwargs)
        if formula is not None:
            self.total += formula(*args, **kwargs, out_val=out)
        return out


class HostSyncFinder(TorchDispatchMode):
    """Records every op that makes the host wait for the device (or copies host data to it), with the
    innermost call site in the weclip_hf package (and the library frame below it, if any)."""

    SCALAR_OPS = {
        "_local_scalar_dense": "reads a device value on the host (.item() / int() / bool() / `if tensor`)",
        "equal": "torch.equal returns a Python bool",
        "nonzero": "nonzero: output shape depends on the data",
        "masked_select": "masked_select: output shape depends on the data",
        "unique": "unique: output shape depends on the data",
        "_unique2": "unique: output shape depends on the data",
        "repeat_interleave": "repeat_interleave with tensor repeats",
        "bincount": "bincount: reads the input's largest value on the host (CUDA)",
    }

    def __init__(self):
        super().__init__()
        self.sites: Counter = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = func._overloadpacket.__name__
        why = self.SCALAR_OPS.get(name)
        if name in ("index", "index_put", "index_put_"):
            indices = args[1] if len(args) > 1 else kwargs.get("indices", ())
            if any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in indices or ()):
                why = "boolean-mask indexing (nonzero inside)"
        elif name == "lift_fresh" and args[0].numel() > 1:
            why = "torch.tensor(Python data): a blocking host->device copy on CUDA"
        elif name in ("_to_copy", "copy_"):
            devices = {a.device.type for a in args if isinstance(a, torch.Tensor)}
            if "device" in kwargs and kwargs["device"] is not None:
                devices.add(torch.device(kwargs["device"]).type)
            if "cpu" in devices and len(devices) > 1:
                why = "copy between host and device"
        if why is not None:
            self.sites[(why, *self._site())] += 1
        return func(*args, **kwargs)

    @staticmethod
    def _site() -> tuple[str, str]:
        """(innermost weclip_hf frame, innermost frame outside examples/ and torch's dispatch machinery)."""
        ours, library = "?", ""
        for frame in reversed(traceback.extract_stack()[:-3]):
            path = str(Path(frame.filename).resolve())
            if path.startswith(PACKAGE_DIR):
                ours = f"weclip_hf/{Path(path).relative_to(PACKAGE_DIR)}:{frame.lineno} `{(frame.line or '').strip()}`"
                break
            if (
                not library
                and not path.startswith(BENCHMARK_DIR)
                and "/torch/utils/" not in path
                and "/torch/_" not in path
            ):
                library = f"{path.split('site-packages/')[-1]}:{frame.lineno}"
        if ours == "?" and "torch/optim/" in library:
            ours = "optimizer step (CPU step counters: no device sync on CUDA)"
        return ours, library


def minor_page_faults(fn) -> int | None:
    """Minor page faults of the process during one more (warm) run of ``fn``: fresh memory mapped and zeroed by
    the kernel at first touch (`weclip_hf.host_memory`); None where getrusage is missing (Windows)."""
    try:
        import resource
    except ImportError:
        return None
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    fn()
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before


MATRIX_PRODUCTS = ("aten::addmm", "aten::mm", "aten::bmm", "aten::baddbmm")


def operator_shares(fn, bench: Bench, top: int = 8) -> dict:
    """Self time per operator of one more run of ``fn`` (torch.profiler; on CUDA the device time of the kernels
    each operator launched): `shares_of_events` of the profile, and under ``lines`` the weclip_hf source lines
    the time comes from (`shares_of_lines`)."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if bench.cuda else [])
    # the operators' Python stacks (the verbose experimental config is what fills them in torch 2.x)
    config = getattr(torch._C._profiler, "_ExperimentalConfig", None)
    stacks = {"with_stack": True, "experimental_config": config(verbose=True)} if config else {}
    with profile(activities=activities, **stacks) as prof:
        fn()
        bench.sync()
    shares = shares_of_events(prof.key_averages(), bench.cuda, top)
    shares["lines"] = shares_of_lines(prof.events(), bench.cuda)
    return shares


NO_FRAME = "no weclip_hf frame (backward, optimizer)"


def shares_of_lines(events, cuda: bool, top: int = 6) -> list[dict]:
    """The operators' self time in profiler ``events`` (device time on CUDA) by the innermost weclip_hf source
    line on their Python stack (``file.py(line): function``), the ``top`` lines with seconds and share of the
    operators' total; operators without such a frame are one row (`NO_FRAME`). User annotations are left out."""
    from torch.autograd import DeviceType

    field = "self_device_time_total" if cuda else "self_cpu_time_total"
    by_line: Counter = Counter()
    for event in events:
        seconds = getattr(event, field)
        if event.device_type != DeviceType.CPU or getattr(event, "is_user_annotation", False) or seconds <= 0:
            continue
        frame = next((f for f in event.stack if "weclip_hf/" in f), None)
        by_line[frame.rsplit("weclip_hf/", 1)[1] if frame else NO_FRAME] += seconds
    total = sum(by_line.values()) or 1.0
    return [dict(line=line, seconds=t / 1e6, share=t / total) for line, t in by_line.most_common(top)]


OUTSIDE_OPERATORS = "kernels no aten operator launched (Triton's: PAR)"


def shares_of_events(events, cuda: bool, top: int = 8) -> dict:
    """The ``top`` operators of averaged profiler ``events`` with their seconds and share of the total, the matrix
    products' share (attention kernels such as SDPA are not counted in it) and the total seconds. On CUDA the
    kernels that no aten operator launched (PAR's Triton kernels) have no operator row: their device time, all
    kernels' less the operators', is one more row (`OUTSIDE_OPERATORS`). User annotations (``record_function``
    ranges such as PAR's launches and the optimizer's step) are left out of the kernels' sum: on the device they
    are spans over the kernels inside them, not kernels."""
    from torch.autograd import DeviceType

    field = "self_device_time_total" if cuda else "self_cpu_time_total"
    # operators only: on CUDA the kernels have rows of their own, whose time their operators' rows already hold
    times = [(e.key, getattr(e, field)) for e in events if e.device_type == DeviceType.CPU]
    if cuda:
        kernels = sum(
            e.self_device_time_total
            for e in events
            if e.device_type != DeviceType.CPU and not getattr(e, "is_user_annotation", False)
        )
        outside = kernels - sum(t for _, t in times)
        if outside > 0:
            times.append((OUTSIDE_OPERATORS, outside))
    times.sort(key=lambda e: -e[1])
    total = sum(t for _, t in times) or 1.0
    return dict(
        top=[dict(op=name, seconds=t / 1e6, share=t / total) for name, t in times[:top] if t > 0],
        matrix_products=sum(t for name, t in times if name in MATRIX_PRODUCTS) / total,
        seconds=total / 1e6,
    )
