"""Speed benchmark of WeCLIP: training step, inference, time breakdown, MFU, host syncs, and the
batched pseudo-label path against the slow per-image/per-class reference (tests/reference_weclip.py);
with ``--method weclip_plus``, WeCLIP+'s training step and inference next to WeCLIP's.

Random weights, synthetic VOC-like inputs, no download. Real size (ViT-B/16, VOC classes) by default;
``--tiny`` uses the tiny test config and a few steps (the CI smoke run).

    python examples/benchmark.py                                  # CUDA when present, else CPU
    python examples/benchmark.py --tiny                           # < 30 s on a laptop CPU
    python examples/benchmark.py --method weclip_plus             # WeCLIP+ (+ DINOv2 ViT-S/14) next to WeCLIP
    python examples/benchmark.py --device cpu --batch_sizes 4 --warmup 1 --repeats 2 ...  # see BENCHMARKS.md

Every time is a median over ``--repeats`` runs after ``--warmup`` runs, with
``torch.cuda.synchronize()`` before the clock is read on CUDA. Peak memory: on CUDA
``torch.cuda.max_memory_allocated`` (absolute, weights included); on CPU the growth of the process's
peak resident set size over the timed runs (Linux ``VmHWM`` after resetting it through
``/proc/self/clear_refs``; ``ru_maxrss`` growth where that file is not writable), which also counts
allocator caches.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import sys
import time
import traceback
from collections import Counter
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402
from torch.utils.flop_counter import flop_registry  # noqa: E402

import weclip_hf  # noqa: E402
from weclip_hf import (  # noqa: E402
    WeCLIPConfig,
    WeCLIPForSemanticSegmentation,
    WeCLIPPlusConfig,
    WeCLIPPlusForSemanticSegmentation,
)
from weclip_hf.affinity import transition_matrix  # noqa: E402
from weclip_hf.cam import cam_box_masks, refine_cams, upsample_normalized  # noqa: E402
from weclip_hf.chunking import images_per_chunk  # noqa: E402
from weclip_hf.host_memory import retain_freed_host_memory  # noqa: E402
from weclip_hf.inference import longest_edge_size, multiscale_flip_logits  # noqa: E402
from weclip_hf.losses import affinity_loss, affinity_targets, segmentation_loss  # noqa: E402
from weclip_hf.par import (  # noqa: E402
    par_affinity,
    par_affinity_eager,
    par_iteration,
    par_iteration_eager,
    par_refine,
    ring_offsets,
)
from weclip_hf.par_triton import triton_available  # noqa: E402
from weclip_hf.pseudo_labels import (  # noqa: E402
    attention_maps_needed,
    background_margins,
    cam_affinity,
    class_scores,
    labels_from_margins,
    patch_attention_maps,
    plan_pairs,
)

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
from conftest import make_tiny_config, make_tiny_plus_config  # noqa: E402
from reference_weclip import reference_pseudo_labels  # noqa: E402

PACKAGE_DIR = str(Path(weclip_hf.__file__).resolve().parent)
GIB = 1024**3
METHOD_NAMES = {"weclip": "WeCLIP", "weclip_plus": "WeCLIP+"}


# --------------------------------------------------------------------------------------------------
# Arguments


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter
    )
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument(
        "--method",
        choices=sorted(METHOD_NAMES),
        default="weclip",
        help="weclip_plus: also time WeCLIP+ (the same CLIP + a frozen DINOv2 ViT-S/14, its head, RFM+ and "
        "losses) training steps and inference, next to WeCLIP's (the breakdown and reference stay WeCLIP's)",
    )
    p.add_argument(
        "--tiny", action="store_true", help="tiny test config, small sizes, few steps (CI smoke run)"
    )
    p.add_argument(
        "--batch_sizes", default=None, help="training batch sizes, comma-separated (default 4,16,64)"
    )
    p.add_argument("--crop", type=int, default=None, help="training crop (default 320)")
    p.add_argument("--rfm", default="off,on", help="RFM settings for the training step: off, on or off,on")
    p.add_argument(
        "--warmup", type=int, default=None, help="warm-up runs (default 3; the FLOP-counting run comes first)"
    )
    p.add_argument("--repeats", type=int, default=None, help="timed runs (default 10)")
    p.add_argument(
        "--breakdown_repeats",
        type=int,
        default=None,
        help="timed runs per piece after --warmup runs (default --repeats)",
    )
    p.add_argument("--no_breakdown", action="store_true", help="skip the per-piece time breakdown")
    p.add_argument(
        "--profile_ops",
        action="store_true",
        help="profile one more training step per setting (torch.profiler), after every timed measurement: each "
        "operator's share of self time, and the weclip_hf source lines that time comes from",
    )
    p.add_argument("--infer_sizes", default=None, help="inference long sides (default 320,512)")
    p.add_argument("--infer_batch_size", type=int, default=None, help="inference batch size (default 16)")
    p.add_argument("--infer_repeats", type=int, default=None, help="timed inference runs (default --repeats)")
    p.add_argument("--no_inference", action="store_true", help="skip the inference measurements")
    p.add_argument(
        "--reference_batch", type=int, default=None, help="batch of the pseudo-label comparison (4)"
    )
    p.add_argument("--reference_repeats", type=int, default=None, help="timed reference runs (default 3)")
    p.add_argument("--reference_warmup", type=int, default=None, help="reference warm-up runs (default 1)")
    p.add_argument("--no_reference", action="store_true", help="skip the comparison with the reference path")
    p.add_argument(
        "--compile_par",
        action="store_true",
        help="also time PAR's iterations compiled with torch.compile (the eager function, and a ring sum over padded "
        "maps) against eager (batch of the first --batch_sizes in PAR's chunks, crop --crop, 3 score maps); PAR's "
        "Triton kernels are timed against eager wherever they run (CUDA), at the first and last --batch_sizes",
    )
    p.add_argument(
        "--compile",
        choices=["none", "decoder", "model"],
        default="none",
        help="torch.compile the decoder (`model.decoder.compile`) or the whole model (`model.compile`: the CLIP "
        "forward, the decoder and the losses; the pseudo-label pipeline stays eager) before anything is timed; "
        "each setting's first run compiles",
    )
    p.add_argument(
        "--compile_backend", default="inductor", help="torch.compile backend of --compile (inductor)"
    )
    p.add_argument(
        "--compile_mode",
        default=None,
        help="torch.compile mode (default: reduce-overhead, i.e. CUDA graphs, on CUDA; default elsewhere)",
    )
    p.add_argument(
        "--autocast",
        choices=["none", "bf16", "fp16"],
        default="none",
        help="run our forward passes under torch.autocast (the reference always runs fp32)",
    )
    p.add_argument(
        "--peak_tflops",
        type=float,
        default=None,
        help="peak of the device for the MFU (default 800 = H100 bf16 dense on CUDA; none on CPU)",
    )
    p.add_argument("--num_threads", type=int, default=None, help="torch.set_num_threads for the run")
    p.add_argument(
        "--release_host_memory",
        action="store_true",
        help="CPU: keep glibc's default of handing freed memory back to the OS (every step and CLIP forward then "
        "maps its large tensors afresh), instead of `weclip_hf.host_memory.retain_freed_host_memory`, which "
        "examples/train.py applies",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output_json", default=None, help="also write every figure to this JSON file")
    args = p.parse_args(argv)
    defaults = dict(
        batch_sizes="4,16,64",
        crop=320,
        warmup=3,
        repeats=10,
        infer_sizes="320,512",
        infer_batch_size=16,
        reference_batch=4,
        reference_repeats=3,
        reference_warmup=1,
    )
    if args.tiny:
        defaults.update(
            batch_sizes="2",
            crop=64,
            warmup=1,
            repeats=2,
            breakdown_repeats=1,
            infer_sizes="64",
            infer_batch_size=2,
            reference_batch=2,
            reference_repeats=1,
            reference_warmup=0,
            num_threads=1,
        )
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.breakdown_repeats = args.breakdown_repeats or args.repeats
    args.infer_repeats = args.infer_repeats or args.repeats
    args.batch_sizes = [int(b) for b in str(args.batch_sizes).split(",") if b]
    args.infer_sizes = [int(s) for s in str(args.infer_sizes).split(",") if s]
    args.rfm = [{"off": False, "on": True}[r.strip()] for r in args.rfm.split(",") if r.strip()]
    if args.compile_mode is None and args.compile_backend == "inductor":  # modes are Inductor's
        args.compile_mode = "reduce-overhead" if args.device.startswith("cuda") else "default"
    if args.peak_tflops is None and args.device.startswith("cuda"):
        args.peak_tflops = 800.0
    return args


# --------------------------------------------------------------------------------------------------
# Measurement helpers


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
        """(innermost weclip_hf frame, innermost frame outside this file and torch's dispatch machinery)."""
        ours, library = "?", ""
        here = str(Path(__file__).resolve())
        for frame in reversed(traceback.extract_stack()[:-3]):
            path = str(Path(frame.filename).resolve())
            if path.startswith(PACKAGE_DIR):
                ours = f"weclip_hf/{Path(path).relative_to(PACKAGE_DIR)}:{frame.lineno} `{(frame.line or '').strip()}`"
                break
            if not library and path != here and "/torch/utils/" not in path and "/torch/_" not in path:
                library = f"{path.split('site-packages/')[-1]}:{frame.lineno}"
        if ours == "?" and "torch/optim/" in library:
            ours = "optimizer step (CPU step counters: no device sync on CUDA)"
        return ours, library


# --------------------------------------------------------------------------------------------------
# Model and inputs


def build_model(tiny: bool, device: torch.device, seed: int, method: str = "weclip"):
    """A random model of ``method``: real size (CLIP ViT-B/16, VOC classes; WeCLIP+: + DINOv2 ViT-S/14, the
    official default) or the tiny test config."""
    torch.manual_seed(seed)
    if method == "weclip_plus":
        config = make_tiny_plus_config() if tiny else WeCLIPPlusConfig()
        return WeCLIPPlusForSemanticSegmentation(config).to(device)
    config = make_tiny_config() if tiny else WeCLIPConfig()
    return WeCLIPForSemanticSegmentation(config).to(device)


def compiled(args: argparse.Namespace, model):
    """``model`` with `--compile`'s part compiled in place (`nn.Module.compile`: same module, same weights). Static
    shapes: each setting (batch size, RFM, training / inference size) gets its own graphs, as in a training run of
    one batch size; the recompilation limit leaves room for all of them."""
    if args.compile != "none":
        torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
        part = model.decoder if args.compile == "decoder" else model
        part.compile(backend=args.compile_backend, mode=args.compile_mode, dynamic=False)
    return model


def trainable_optimizer(model) -> torch.optim.Optimizer:
    """AdamW on the trainable weights (WeCLIP: the decoder; WeCLIP+: also the DINO head), the toy recipe's."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    return torch.optim.AdamW(trainable, lr=2e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01)


def synthetic_batch(batch: int, height: int, width: int, num_classes: int, device: torch.device, seed: int):
    """Smooth random normalized images and VOC-like labels (1 or 2 classes per image, 1.5 on average)."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.randn(batch, 3, max(height // 32, 2), max(width // 32, 2), generator=g)
    images = F.interpolate(coarse, size=(height, width), mode="bilinear", align_corners=False)
    images = images + 0.3 * torch.randn(batch, 3, height, width, generator=g)
    labels = torch.zeros(batch, num_classes)
    for i in range(batch):
        labels[i, torch.randperm(num_classes, generator=g)[: min(1 + i % 2, num_classes)]] = 1.0
    return images.to(device), labels.to(device)


def autocast_context(args: argparse.Namespace, device: torch.device):
    if args.autocast == "none":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if args.autocast == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


# --------------------------------------------------------------------------------------------------
# Measurements


def clip_forward_fn(args, model, pixel_values):
    """A plain forward of the frozen CLIP vision tower on ``pixel_values`` (all L blocks, SDPA, no gradient,
    no attention maps; transformers' own `CLIPVisionModel` forward): the work any use of the frozen CLIP
    pays, against which the step's and inference's overhead is measured."""
    vision_model = model.vision_model

    def forward():
        with torch.no_grad(), autocast_context(args, pixel_values.device):
            return vision_model(pixel_values=pixel_values, interpolate_pos_encoding=True).last_hidden_state

    return forward


def training_step(args, bench, model, optimizer, batch: int, use_rfm: bool):
    """One training step on a synthetic batch (forward with class_labels + backward + AdamW on the decoder) as a
    function of no arguments, and the batch's pixel values."""
    device = bench.device
    pixel_values, class_labels = synthetic_batch(
        batch, args.crop, args.crop, model.config.num_foreground_classes, device, args.seed
    )
    model.train()

    def step():
        optimizer.zero_grad(set_to_none=True)
        with autocast_context(args, device):
            out = model(pixel_values, class_labels=class_labels, use_rfm=use_rfm)
        out.loss.backward()
        optimizer.step()

    return step, pixel_values


def measure_training(args, bench, model, optimizer, batch, use_rfm) -> dict:
    """Training step: FLOPs, host syncs, median time, throughput, peak memory, and the median of a plain CLIP
    forward of the same batch timed side by side (runs interleaved)."""
    step, pixel_values = training_step(args, bench, model, optimizer, batch, use_rfm)
    clip_forward = clip_forward_fn(args, model, pixel_values)
    syncs = HostSyncFinder()
    flops = FlopCounter()
    # also the first warm-up run; eager (a compiled model's forward is compiled by the next run): every operator
    # passes the counters, and a frame first met under a dispatch mode is never compiled
    with torch.compiler.set_stance("force_eager"), flops, syncs:
        step()
    bench.sync()
    with bench.peak_memory() as memory:
        medians = bench.paired_medians(dict(step=step, clip=clip_forward), args.warmup, args.repeats)
    seconds = medians["step"]
    faults = minor_page_faults(step)
    total_flops = flops.total
    achieved = total_flops / seconds
    return dict(
        method=model.config.model_type,
        batch=batch,
        crop=args.crop,
        rfm=use_rfm,
        seconds=seconds,
        clip_forward_seconds=medians["clip"],
        images_per_s=batch / seconds,
        peak_bytes=memory["peak_bytes"],
        memory_method=memory["method"],
        gflop_per_image=total_flops / batch / 1e9,
        page_faults=faults,
        op_shares=None,  # `profile_training_grid`, after every timed measurement
        achieved_tflops=achieved / 1e12,
        mfu=achieved / (args.peak_tflops * 1e12) if args.peak_tflops else None,
        host_syncs=[
            dict(what=why, where=where, library=library, count=count)
            for (why, where, library), count in syncs.sites.items()
        ],
    )


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


def measure_breakdown(args, bench, model, optimizer, batch, use_rfm) -> dict:
    """Time the pieces of a training step separately: CLIP forward, then the stages of the model's own
    `generate_pseudo_labels` (`weclip_hf.pseudo_labels`) on the same inputs: GradCAM, affinity (maps + the
    attention mean or RFM + transition matrix), box masks + refinement + upsampling, PAR; the whole
    `generate_pseudo_labels`, decoder forward + losses + backward + AdamW; and a plain CLIP forward (all L
    blocks, SDPA) of the same batch as the yardstick. The pieces' runs are interleaved."""
    device, cfg = bench.device, model.config
    pixel_values, class_labels = synthetic_batch(
        batch, args.crop, args.crop, cfg.num_foreground_classes, device, args.seed
    )
    model.train()
    amp = lambda: autocast_context(args, device)  # noqa: E731

    def clip_forward():
        with amp():
            return model.forward_clip_features(pixel_values, attention_maps_needed(cfg, use_rfm))

    clip = clip_forward()
    hidden, grid = clip.hidden, clip.grid
    tokens = [t[:, 1:] for t in hidden[len(hidden) - cfg.num_feature_layers :]]

    def decoder_forward():
        with amp():
            logits, features = model.decoder(tokens, grid)
        flat = features.flatten(2).float()
        return logits, torch.sigmoid(flat.transpose(1, 2) @ flat)

    decoder_affinity = decoder_forward()[1].detach()

    def pseudo_labels():  # float32 under any autocast, as in the model's forward
        return model.generate_pseudo_labels(pixel_values, class_labels, clip, decoder_affinity, use_rfm)

    details = pseudo_labels()
    pseudo = details.pseudo_labels
    # the stages, in the order of generate_pseudo_labels (the pair plan, class scores, labels and dense CAMs are
    # the "other" share); each timed on the model's own intermediates and checked to reproduce the next one
    # (from the same inputs, not a chain of recomputations: with random weights the RFM's layer choice and the
    # uint8 box threshold sit at near-ties that last-bit differences of a recomputation could flip)
    plan = plan_pairs(class_labels, device)

    def gradcam_piece():  # the model's own call of `pair_gradcams` (chunked on a CPU)
        return model.pair_gradcams(hidden[-1], plan, grid)

    gradcams = gradcam_piece()

    def affinity_piece():
        maps = patch_attention_maps(clip.attention, gradcams.last_attention, plan)
        affinity = cam_affinity(maps, cfg, use_rfm, decoder_affinity).affinity
        return affinity, transition_matrix(affinity)

    affinity, _ = affinity_piece()
    transition = transition_matrix(details.affinity_before_norm)

    def box_refine_piece():
        masks = cam_box_masks(details.gradcams, cfg.cam_box_threshold)
        refined_grid = refine_cams(details.gradcams, transition, plan.image, masks)
        return masks, refined_grid, upsample_normalized(refined_grid, pixel_values.shape[-2:])

    masks, refined_grid, _ = box_refine_piece()
    margins = background_margins(class_scores(details.refined_cams, plan, cfg.cam_bg_exponent), plan)

    def par_piece():  # as the model: PAR on the classes' margins over the background, the maps in use only
        return par_refine(
            pixel_values,
            margins,
            cfg.par_dilations,
            cfg.par_num_iter,
            cfg.par_temperature,
            cfg.par_pos_weight,
            num_maps=plan.present.sum(1),
        )

    check = dict(rtol=1e-5, atol=1e-6, msg=lambda m: f"a timed stage differs from the model: {m}")
    torch.testing.assert_close(gradcams.cams, details.gradcams, **check)
    torch.testing.assert_close(affinity, details.affinity_before_norm, **check)
    torch.testing.assert_close(masks, details.box_masks, rtol=0, atol=0)
    torch.testing.assert_close(refined_grid, details.refined_cams_grid, **check)
    torch.testing.assert_close(labels_from_margins(par_piece(), plan), pseudo, rtol=0, atol=0)

    def decoder_train():
        optimizer.zero_grad(set_to_none=True)
        logits, affinity = decoder_forward()
        seg = segmentation_loss(logits, pseudo, cfg.semantic_loss_ignore_index)
        targets = affinity_targets(pseudo, grid, cfg.affinity_radius, cfg.semantic_loss_ignore_index)
        loss = seg + cfg.affinity_loss_weight * affinity_loss(affinity, targets)[0]
        loss.backward()
        optimizer.step()

    pieces = dict(
        plain_clip_forward=clip_forward_fn(args, model, pixel_values),
        clip_forward=clip_forward,
        gradcam=gradcam_piece,
        affinity=affinity_piece,
        box_masks_refine=box_refine_piece,
        par=par_piece,
        generate_pseudo_labels=pseudo_labels,
        decoder_train=decoder_train,
    )
    seconds = bench.paired_medians(pieces, args.warmup, args.breakdown_repeats)
    parts = ("gradcam", "affinity", "box_masks_refine", "par")
    seconds["pseudo_label_other"] = max(
        seconds["generate_pseudo_labels"] - sum(seconds[p] for p in parts), 0.0
    )
    seconds["sum"] = seconds["clip_forward"] + seconds["generate_pseudo_labels"] + seconds["decoder_train"]
    return dict(batch=batch, crop=args.crop, rfm=use_rfm, seconds=seconds, pairs=plan.num_pairs)


def par_inputs(args, batch: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """A smooth random image batch and 3 random score maps at the crop size, float32 (PAR's inputs)."""
    g = torch.Generator().manual_seed(args.seed + 2)
    image = torch.randn(batch, 3, args.crop, args.crop, generator=g).to(device)
    return image, torch.rand(batch, 3, args.crop, args.crop, generator=g).to(device)


def par_setting(args, cfg, batch: int) -> dict:
    """The setting of a PAR measurement (`par_inputs` at ``batch``, the config's iterations and neighbours)."""
    return dict(
        batch=batch, crop=args.crop, iterations=cfg.par_num_iter, neighbours=8 * len(cfg.par_dilations)
    )


def iterate(iteration, scores, weights, cfg) -> torch.Tensor:
    """The config's PAR iterations with ``iteration`` (one of `par_iteration`'s implementations)."""
    for _ in range(cfg.par_num_iter):
        scores = iteration(scores, weights, cfg.par_dilations)
    return scores


def ring_sum(padded: torch.Tensor, weights: torch.Tensor, offsets: list[tuple[int, int]]) -> torch.Tensor:
    """One PAR iteration as a plain sum of products over the ring neighbours, for `torch.compile`: ``padded`` the
    maps replicate-padded by the largest offset [B, C, H + 2p, W + 2p], ``weights`` pixel-row-major [B, H, K, W]
    (one row's K neighbour weights side by side), ``offsets`` the K (row, column) offsets in `par_iteration`'s
    order. Inductor fuses it into one pass over the pixels (no clamped indices, no read-modify-write per
    neighbour)."""
    h, w = weights.shape[1], weights.shape[3]
    pad = (padded.shape[-1] - w) // 2
    total = None
    for k, (dy, dx) in enumerate(offsets):
        term = weights[:, None, :, k] * padded[:, :, pad + dy : pad + dy + h, pad + dx : pad + dx + w]
        total = term if total is None else total + term
    return total


def measure_par_compile(args, bench, model) -> list[dict]:
    """The config's PAR iterations eager (`par_iteration_eager`, float32) against two forms of them under
    ``torch.compile(dynamic=False)`` on the same inputs: the eager function itself, and `ring_sum` (the padding
    outside the graph, the weights pixel-row-major). All run over the images in `par_refine`'s chunks (on a CPU one
    image at a 320 crop: its 8*D weight planes then stay in the cache). Per form: compile time (the first call),
    median times, max abs difference from eager."""
    cfg, device = model.config, bench.device
    batch = args.batch_sizes[0]
    image, scores = par_inputs(args, batch, device)
    weights = par_affinity_eager(image, cfg.par_dilations, cfg.par_temperature, cfg.par_pos_weight)
    offsets = ring_offsets(tuple(cfg.par_dilations), torch.device("cpu")).T.tolist()
    pad = max(cfg.par_dilations)
    chunk = images_per_chunk(batch, weights[:, 0].numel() * 4, device)
    score_chunks, weight_chunks = scores.split(chunk), weights.split(chunk, dim=1)
    rows_first = [w.permute(1, 2, 0, 3).contiguous() for w in weight_chunks]  # [b, H, K, W] per chunk
    compiled_ring = torch.compile(ring_sum, dynamic=False)

    def ring_iteration(s: torch.Tensor, w: torch.Tensor, _dilations) -> torch.Tensor:
        return compiled_ring(F.pad(s, (pad,) * 4, mode="replicate"), w, offsets)

    def refined(iteration, chunk_weights) -> Callable[[], torch.Tensor]:
        """The config's iterations with ``iteration`` over the chunks, as one function of no arguments."""
        return lambda: torch.cat([iterate(iteration, s, w, cfg) for s, w in zip(score_chunks, chunk_weights)])

    eager = refined(par_iteration_eager, weight_chunks)
    forms = {
        "the eager iteration": refined(torch.compile(par_iteration_eager, dynamic=False), weight_chunks),
        "ring sum, weights [B, H, K, W]": refined(ring_iteration, rows_first),
    }
    rows = []
    with torch.no_grad():
        eager_out = eager()
        eager_s = bench.median(eager, args.warmup, args.breakdown_repeats)
        for form, fn in forms.items():
            start = time.perf_counter()
            compiled_out = fn()
            bench.sync()
            compile_seconds = time.perf_counter() - start
            rows.append(
                dict(
                    **par_setting(args, cfg, batch),
                    images_per_chunk=chunk,
                    form=form,
                    eager_seconds=eager_s,
                    compiled_seconds=bench.median(fn, args.warmup, args.breakdown_repeats),
                    compile_seconds=compile_seconds,
                    max_abs_diff=float((compiled_out - eager_out).abs().max()),
                )
            )
    return rows


def measure_par_kernels(args, bench, model, batch: int) -> dict:
    """PAR's Triton kernels (`weclip_hf.par_triton`, taken where they run: CUDA) against the eager path on the same
    inputs, runs interleaved: the neighbour weights and the config's iterations (3 maps), median times and max
    abs differences."""
    cfg, device = model.config, bench.device
    image, scores = par_inputs(args, batch, device)
    setting = (cfg.par_dilations, cfg.par_temperature, cfg.par_pos_weight)
    weights = par_affinity_eager(image, *setting)
    with torch.no_grad():
        seconds = bench.paired_medians(
            dict(
                weights_eager=lambda: par_affinity_eager(image, *setting),
                weights_kernel=lambda: par_affinity(image, *setting),
                iterations_eager=lambda: iterate(par_iteration_eager, scores, weights, cfg),
                iterations_kernel=lambda: iterate(par_iteration, scores, weights, cfg),
            ),
            args.warmup,
            args.breakdown_repeats,
        )
        weights_diff = (par_affinity(image, *setting) - weights).abs().max()
        refined_diff = (
            (
                iterate(par_iteration, scores, weights, cfg)
                - iterate(par_iteration_eager, scores, weights, cfg)
            )
            .abs()
            .max()
        )
    return dict(
        **par_setting(args, cfg, batch),
        seconds=seconds,
        weights_max_abs_diff=float(weights_diff),
        refined_max_abs_diff=float(refined_diff),
    )


def measure_reference(args, bench, model, use_rfm) -> dict:
    """Pseudo labels (CLIP forward + CAMs + refinement + PAR): our batched path vs the per-image/per-class
    reference, timed on the same inputs, and the fraction of pixels where they agree."""
    device, cfg = bench.device, model.config
    batch = args.reference_batch
    pixel_values, class_labels = synthetic_batch(
        batch, args.crop, args.crop, cfg.num_foreground_classes, device, args.seed + 1
    )
    model.eval()
    with torch.no_grad():
        clip = model.forward_clip_features(pixel_values, 0)
        hidden, grid = clip.hidden, clip.grid
        tokens = [t[:, 1:] for t in hidden[len(hidden) - cfg.num_feature_layers :]]
        features = model.decoder(tokens, grid)[1].flatten(2).float()
        decoder_affinity = torch.sigmoid(features.transpose(1, 2) @ features)

    last: dict = {}

    def ours():  # the CLIP forward under --autocast; the pseudo labels in float32, as in the model's forward
        with autocast_context(args, device):
            clip = model.forward_clip_features(pixel_values, attention_maps_needed(cfg, use_rfm))
        last["ours"] = model.generate_pseudo_labels(
            pixel_values, class_labels, clip, decoder_affinity, use_rfm
        )

    # The reference mixes NumPy into the loop: it runs on the CPU (a CPU copy of the model on CUDA).
    ref_bench = Bench(torch.device("cpu"))
    ref_model = model if device.type == "cpu" else _cpu_copy(model)
    ref_inputs = (pixel_values.cpu(), class_labels.cpu(), decoder_affinity.cpu())

    def reference():
        last["ref"] = reference_pseudo_labels(ref_model, ref_inputs[0], ref_inputs[1], use_rfm, ref_inputs[2])

    ours_s = bench.median(ours, args.warmup, max(args.repeats, 1))
    ref_s = ref_bench.median(reference, args.reference_warmup, max(args.reference_repeats, 1))
    return dict(
        batch=batch,
        crop=args.crop,
        rfm=use_rfm,
        ours_seconds=ours_s,
        reference_seconds=ref_s,
        speedup=ref_s / ours_s,
        reference_device="cpu",
        **compare(last["ours"], last["ref"]),
    )


def compare(ours, ref: dict) -> dict:
    """Agreement of our pseudo labels and intermediates with the reference's.

    With random CLIP weights the attention is nearly uniform, so the refined CAMs are nearly flat
    (``refined_spread`` = (max - min) / max of the refined grid, ~1e-5): their min-max normalization
    amplifies float32 summation-order differences (~1e-7) by ~1e5 and moves labels; for the same
    reason the RFM's layer choice (float32 sums of near-equal masses) can flip. The intermediates
    before that normalization are the sharper check."""
    differ = ours.pseudo_labels.cpu() != ref["pseudo_labels"]
    refined = torch.from_numpy(np.stack(ref["refined_grid"]))
    gradcams = torch.from_numpy(np.stack(ref["gradcams"]))
    boxes = torch.from_numpy(np.stack(ref["box_masks"]))
    ours_refined = ours.refined_cams_grid.float().cpu()
    spread = (refined.amax((-2, -1)) - refined.amin((-2, -1))) / refined.abs().amax((-2, -1)).clamp(min=1e-30)
    return dict(
        equal_pixels=1.0 - differ.float().mean().item(),
        # differing pixels at near-ties of the reference's PAR scores (top-2 gap < 1e-3)?
        differ_at_near_ties=bool((ref["margins"][differ] < 1e-3).all()),
        gradcam_max_abs_diff=(ours.gradcams.float().cpu() - gradcams).abs().max().item(),
        box_masks_equal=(ours.box_masks.cpu() == boxes).float().mean().item(),
        refined_max_rel_diff=(
            (ours_refined - refined).abs().max() / refined.abs().max().clamp(min=1e-30)
        ).item(),
        refined_spread_median=spread.median().item(),
        # the official RFM rule can keep no layer (nearly equal d, e.g. a saturated decoder affinity): NaN CAMs in
        # the reference; ours keeps the smallest d (`affinity.rfm_keep_rule`)
        reference_refined_finite=bool(torch.isfinite(refined).all()),
        ours_refined_finite=bool(torch.isfinite(ours_refined).all()),
    )


def _cpu_copy(model):
    import copy

    return copy.deepcopy(model).cpu().float()


def measure_inference(args, bench, model) -> list[dict]:
    """CLIP + decoder only (`model(pixel_values)`): single scale and multi-scale (1.0, 0.75) + flip, timed
    side by side with a plain CLIP forward of the same batch (runs interleaved)."""
    device = bench.device
    model.eval()
    rows = []
    for side in args.infer_sizes:
        # a square crop-sized image for the training crop, else the VOC aspect (500x375 -> 512x384)
        size = (side, side) if side == args.crop else longest_edge_size(375, 500, side)
        pixel_values, _ = synthetic_batch(args.infer_batch_size, *size, 1, device, args.seed + 2)

        def single(pixel_values=pixel_values):
            with torch.no_grad(), autocast_context(args, device):
                return model(pixel_values=pixel_values).logits

        def multiscale_flip(pixel_values=pixel_values):
            with torch.no_grad(), autocast_context(args, device):
                return multiscale_flip_logits(model, pixel_values)

        fns = dict(
            single=single, multiscale_flip=multiscale_flip, clip=clip_forward_fn(args, model, pixel_values)
        )
        medians = bench.paired_medians(fns, args.warmup, args.infer_repeats)
        for mode in ("single", "multiscale_flip"):
            rows.append(
                dict(
                    method=model.config.model_type,
                    size=list(size),
                    mode=mode,
                    batch=args.infer_batch_size,
                    seconds=medians[mode],
                    clip_forward_seconds=medians["clip"],
                    images_per_s=args.infer_batch_size / medians[mode],
                )
            )
    return rows


# --------------------------------------------------------------------------------------------------
# Report


def _gib(n: int) -> str:
    return f"{n / GIB:.2f} GiB"


def _faults(row: dict) -> str:
    """The page-fault count of a training row for the table ("" where not measured)."""
    return "" if row.get("page_faults") is None else f"{row['page_faults']:,} page faults/step, "


def render_table(result: dict) -> str:
    cuda = result["env"]["device_type"] == "cuda"
    mem_label = "peak" if cuda else "peak RSS +"
    # train step and inference rows: "reference" is a plain CLIP forward of the same batch, timed side by side
    lines = ["| section | setting | ours | reference | ratio |", "|---|---|---|---|---|"]

    def add(section, setting, ours, reference="", ratio=""):
        lines.append(f"| {section} | {setting} | {ours} | {reference} | {ratio} |")

    for t in result["training"]:
        mfu = f"MFU {100 * t['mfu']:.1f}%" if t["mfu"] is not None else "MFU n/a"
        add(
            "train step",
            _method_prefix(t) + _training_setting(t),
            f"**{t['images_per_s']:.2f} img/s** ({1e3 * t['seconds']:.0f} ms/step), {mem_label} "
            f"{_gib(t['peak_bytes'])}, {_faults(t)}{t['gflop_per_image']:.1f} GFLOP/img, "
            f"{1e3 * t['achieved_tflops']:.1f} GFLOP/s, {mfu}",
            f"CLIP forward {1e3 * t['clip_forward_seconds']:.0f} ms",
            f"**{t['seconds'] / t['clip_forward_seconds']:.2f}x**",
        )
    for r in result["reference"]:
        setting = _training_setting(r)
        add(
            "pseudo labels (CLIP fwd + CAM + refine + PAR)",
            setting,
            f"{1e3 * r['ours_seconds']:.1f} ms",
            f"{1e3 * r['reference_seconds']:.1f} ms ({r['reference_device']})",
            f"**{r['speedup']:.2f}x**",
        )
        ties = (
            "all at near-ties (top-2 PAR gap < 1e-3)" if r["differ_at_near_ties"] else "NOT all at near-ties"
        )
        add(
            "pseudo-label agreement",
            setting,
            f"{100 * r['equal_pixels']:.4f}% equal pixels; the others {ties}",
            "(reference)",
            "",
        )
        add(
            "intermediates vs reference",
            setting,
            f"GradCAM max abs diff {r['gradcam_max_abs_diff']:.1e}; box masks {100 * r['box_masks_equal']:.2f}% "
            f"equal; refined CAM max rel diff {r['refined_max_rel_diff']:.1e} (refined CAM spread "
            f"(max-min)/max {r['refined_spread_median']:.1e})"
            + "".join(
                f"; {who} refined CAMs NOT finite"
                for who, finite in (
                    ("reference", r["reference_refined_finite"]),
                    ("our", r["ours_refined_finite"]),
                )
                if not finite
            ),
            "(reference)",
            "",
        )
    for b in result["breakdown"]:
        s = b["seconds"]
        setting = f"batch {b['batch']}, RFM {'on' if b['rfm'] else 'off'}, {b['pairs']} pairs"
        plain = s["plain_clip_forward"]
        groups = [
            ("CLIP forward (first L-1 blocks)", s["clip_forward"]),
            ("CAM: GradCAM (last block fwd+bwd, all pairs)", s["gradcam"]),
            ("CAM: box masks + refine + upsample", s["box_masks_refine"]),
            ("CAM: other (pairs, scores, labels)", s["pseudo_label_other"]),
            (f"{'RFM' if b['rfm'] else 'attention'} affinity + transition matrix", s["affinity"]),
            ("PAR", s["par"]),
            ("decoder fwd + losses + bwd + AdamW", s["decoder_train"]),
        ]
        for name, sec in groups:
            add(
                f"share: {name}",
                setting,
                f"{100 * sec / s['sum']:.1f}% ({1e3 * sec:.1f} ms)",
                "CLIP forward",
                f"{sec / plain:.3f}x",
            )
        add(
            "share: sum of pieces",
            setting,
            f"{1e3 * s['sum']:.1f} ms (step measured separately above)",
            f"CLIP forward {1e3 * plain:.1f} ms (all blocks, SDPA)",
            f"**{s['sum'] / plain:.2f}x**",
        )
    for c in result["par_kernels"]:
        setting = f"batch {c['batch']}, {c['crop']}x{c['crop']}, {c['neighbours']} neighbours"
        t = c["seconds"]
        add(
            "PAR weights: Triton kernel vs eager",
            setting,
            f"{1e3 * t['weights_kernel']:.2f} ms kernel (max abs diff {c['weights_max_abs_diff']:.1e})",
            f"{1e3 * t['weights_eager']:.2f} ms eager",
            f"**{t['weights_eager'] / t['weights_kernel']:.2f}x**",
        )
        add(
            "PAR iterations: Triton kernel vs eager",
            f"{setting}, 3 maps, {c['iterations']} iterations",
            f"{1e3 * t['iterations_kernel']:.2f} ms kernel (max abs diff {c['refined_max_abs_diff']:.1e})",
            f"{1e3 * t['iterations_eager']:.2f} ms eager",
            f"**{t['iterations_eager'] / t['iterations_kernel']:.2f}x**",
        )
    for c in result["par_compile"]:
        add(
            f"PAR iterations: torch.compile ({c['form']}) vs eager",
            f"batch {c['batch']} ({c['images_per_chunk']} per chunk), 3 maps, {c['crop']}x{c['crop']}, "
            f"{c['iterations']} x {c['neighbours']} neighbours",
            f"{1e3 * c['compiled_seconds']:.1f} ms compiled (first call {c['compile_seconds']:.1f} s; max abs "
            f"diff {c['max_abs_diff']:.1e})",
            f"{1e3 * c['eager_seconds']:.1f} ms eager",
            f"**{c['eager_seconds'] / c['compiled_seconds']:.2f}x**",
        )
    for i in result["inference"]:
        add(
            "inference (CLIP + decoder)",
            _method_prefix(i) + _inference_setting(i),
            f"**{i['images_per_s']:.2f} img/s** ({1e3 * i['seconds']:.0f} ms/batch)",
            f"CLIP forward {1e3 * i['clip_forward_seconds']:.0f} ms",
            f"**{i['seconds'] / i['clip_forward_seconds']:.2f}x**",
        )
    for plus, weclip, setting in _method_pairs(result):
        add(
            "WeCLIP+ vs WeCLIP",
            setting,
            f"{1e3 * plus['seconds']:.0f} ms",
            f"WeCLIP {1e3 * weclip['seconds']:.0f} ms",
            f"**{plus['seconds'] / weclip['seconds']:.2f}x**",
        )
    return "\n".join(lines)


def _training_setting(row: dict) -> str:
    """A training row's setting: batch, crop, RFM."""
    return f"batch {row['batch']}, crop {row['crop']}, RFM {'on' if row['rfm'] else 'off'}"


def _inference_setting(row: dict) -> str:
    """An inference row's setting: size, scales, batch."""
    mode = "single scale" if row["mode"] == "single" else "scales 1, 0.75 + flip"
    return f"{row['size'][0]}x{row['size'][1]}, {mode}, batch {row['batch']}"


def _method_prefix(row: dict) -> str:
    """ "WeCLIP+, " for a WeCLIP+ row (the WeCLIP rows keep their unprefixed settings)."""
    return "WeCLIP+, " if row.get("method") == "weclip_plus" else ""


def _method_pairs(result: dict) -> list[tuple[dict, dict, str]]:
    """(WeCLIP+ row, WeCLIP row, setting) for every training and inference setting measured for both."""
    pairs = []
    for key, describe in (
        ("training", lambda r: "train step, " + _training_setting(r)),
        ("inference", lambda r: "inference " + _inference_setting(r)),
    ):
        weclip = {describe(r): r for r in result[key] if r.get("method", "weclip") == "weclip"}
        for row in result[key]:
            if row.get("method") == "weclip_plus" and describe(row) in weclip:
                pairs.append((row, weclip[describe(row)], describe(row)))
    return pairs


def render_syncs(result: dict) -> str:
    merged: dict[tuple[str, str, str], int] = {}
    for t in result["training"]:
        for sync in t["host_syncs"]:
            site = (sync["what"], sync["where"], sync["library"])
            merged[site] = max(merged.get(site, 0), sync["count"])
    if not merged:
        return "Host syncs in one training step: none found."
    lines = [
        "Host syncs in one training step (max count per step over the configurations):",
        "| what | where (weclip_hf) | library frame | count |",
        "|---|---|---|---|",
    ]
    for (why, where, library), count in sorted(merged.items(), key=lambda kv: kv[0][1]):
        lines.append(f"| {why} | {where.replace('|', chr(92) + '|')} | {library} | {count} |")
    return "\n".join(lines)


def render_op_shares(result: dict) -> str:
    """`--profile_ops`: per training setting, the matrix products' share and the top operators."""
    rows = [t for t in result["training"] if t.get("op_shares")]
    if not rows:
        return ""
    lines = [
        "Where one training step's time goes (torch.profiler, self time per operator, one step; on CUDA the "
        "kernels' time, and the profiled kernel time against the timed step: well below 100% the host is what the "
        "step waits for):",
        "| setting | profiled time / step | matrix products (addmm, mm, bmm, baddbmm) | top operators |",
        "|---|---|---|---|",
    ]
    where_rows = []
    for t in rows:
        shares = t["op_shares"]
        top = ", ".join(f"{o['op']} {100 * o['share']:.1f}%" for o in shares["top"])
        where = ", ".join(f"{o['line']} {100 * o['share']:.1f}%" for o in shares["lines"])
        rfm = "on" if t["rfm"] else "off"
        setting = f"{METHOD_NAMES[t['method']]}, batch {t['batch']}, crop {t['crop']}, RFM {rfm}"
        busy = f"{1e3 * shares['seconds']:.1f} ms / {1e3 * t['seconds']:.1f} ms"
        lines.append(f"| {setting} | {busy} | {100 * shares['matrix_products']:.1f}% | {top} |")
        where_rows.append(f"| {METHOD_NAMES[t['method']]}, batch {t['batch']}, RFM {rfm} | {where} |")
    lines += [
        "",
        "Where in weclip_hf that time comes from (the same profiles, operators' self time by the innermost "
        "weclip_hf source line on their stack):",
        "| setting | top source lines |",
        "|---|---|",
        *where_rows,
    ]
    return "\n".join(lines)


def environment(device: torch.device, args) -> dict:
    import transformers

    env = dict(
        device_type=device.type,
        torch=torch.__version__,
        transformers=transformers.__version__,
        python=platform.python_version(),
        threads=torch.get_num_threads(),
        cpu=platform.processor() or platform.machine(),
        autocast=args.autocast,
        compile=args.compile
        if args.compile == "none"
        else f"{args.compile} ({args.compile_backend}, {args.compile_mode})",
        host_memory=args.host_memory,
        model="tiny test config" if args.tiny else "ViT-B/16 + VOC (random weights)",
    )
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
    return env


def measure_training_grid(args, bench, model, optimizer, result: dict) -> None:
    """`measure_training` for every batch size and RFM setting, appended to ``result["training"]``."""
    name = METHOD_NAMES[model.config.model_type]
    for batch in args.batch_sizes:
        for use_rfm in args.rfm:
            row = measure_training(args, bench, model, optimizer, batch, use_rfm)
            result["training"].append(row)
            print(f"  {name} train batch {batch} rfm {use_rfm}: {row['images_per_s']:.2f} img/s", flush=True)


def profile_training_grid(args, bench, model, optimizer, result: dict) -> None:
    """`--profile_ops`: each training row of ``model``'s method gets its step's operator shares. Run after every
    timed measurement, so that no timed figure follows a profiler session (on CUDA, CUPTI stays initialised after
    one and can add per-launch overhead)."""
    for row in result["training"]:
        if row["method"] == model.config.model_type:
            step, _ = training_step(args, bench, model, optimizer, row["batch"], row["rfm"])
            step()  # a warm-up of this batch size
            row["op_shares"] = operator_shares(step, bench)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.num_threads:
        torch.set_num_threads(args.num_threads)
    device = torch.device(args.device)
    args.host_memory = "default"
    if device.type == "cpu" and not args.release_host_memory and retain_freed_host_memory():
        args.host_memory = "retained"  # for the step and the CLIP forward alike: one process
    bench = Bench(device)
    start = time.perf_counter()
    model = compiled(args, build_model(args.tiny, device, args.seed))
    optimizer = trainable_optimizer(model)
    result = dict(
        env=environment(device, args),
        args={k: v for k, v in vars(args).items()},
        training=[],
        breakdown=[],
        par_compile=[],
        par_kernels=[],
        reference=[],
        inference=[],
    )
    print(f"# WeCLIP benchmark: {result['env']}", flush=True)

    measure_training_grid(args, bench, model, optimizer, result)
    if not args.no_breakdown:
        for use_rfm in args.rfm:
            result["breakdown"].append(
                measure_breakdown(args, bench, model, optimizer, args.batch_sizes[0], use_rfm)
            )
            print(f"  breakdown rfm {use_rfm} done", flush=True)
    if triton_available(torch.zeros(1, device=device)):  # PAR's kernels run here: against the eager path
        for batch in sorted({args.batch_sizes[0], args.batch_sizes[-1]}):
            result["par_kernels"].append(measure_par_kernels(args, bench, model, batch))
        print("  PAR kernels done", flush=True)
    if args.compile_par:
        result["par_compile"] = measure_par_compile(args, bench, model)
        for row in result["par_compile"]:
            print(f"  PAR compile, {row['form']}: {row['compile_seconds']:.1f} s to compile", flush=True)
    if not args.no_reference:
        for use_rfm in args.rfm:
            result["reference"].append(measure_reference(args, bench, model, use_rfm))
            print(f"  reference rfm {use_rfm}: {result['reference'][-1]['speedup']:.2f}x", flush=True)
    if not args.no_inference:
        result["inference"] = measure_inference(args, bench, model)
    if args.method == "weclip_plus":  # the same measurements of WeCLIP+, after WeCLIP's model is freed
        del model, optimizer
        model = compiled(args, build_model(args.tiny, device, args.seed, "weclip_plus"))
        optimizer = trainable_optimizer(model)
        measure_training_grid(args, bench, model, optimizer, result)
        if not args.no_inference:
            result["inference"] += measure_inference(args, bench, model)
    if args.profile_ops:  # last: nothing timed runs after a profiler session
        profile_training_grid(args, bench, model, optimizer, result)
        if args.method == "weclip_plus":
            del model, optimizer
            model = compiled(args, build_model(args.tiny, device, args.seed))
            profile_training_grid(args, bench, model, trainable_optimizer(model), result)
    result["total_seconds"] = time.perf_counter() - start

    print()
    print(render_table(result))
    print()
    print(render_syncs(result))
    if args.profile_ops:
        print()
        print(render_op_shares(result))
    if result["training"]:
        print(
            f"\nMemory: {result['training'][0]['memory_method']}. FLOPs: torch.utils.flop_counter formulas "
            f"(matmuls/convs/attention only; PAR and other elementwise work count 0). "
            f"Total {result['total_seconds']:.0f} s."
        )
    if args.output_json:
        Path(args.output_json).write_text(json.dumps(result, indent=2, default=str))
    return result


if __name__ == "__main__":
    main()
