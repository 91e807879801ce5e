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

The instruments, the workloads, the step's breakdown, PAR's measurements, the comparison with the reference and the
report live in `examples/benchmarking/`; this script holds the command line, the training-step and inference
measurements, and the run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import torch
from benchmarking.breakdown import measure_breakdown
from benchmarking.instruments import (
    Bench,
    FlopCounter,
    HostSyncFinder,
    minor_page_faults,
    operator_shares,
)
from benchmarking.par_measurements import measure_par_compile, measure_par_kernels
from benchmarking.reference_comparison import measure_reference
from benchmarking.report import render_op_shares, render_syncs, render_table
from benchmarking.workloads import (
    autocast_context,
    build_model,
    clip_forward_fn,
    compiled,
    int_list,
    rfm_settings,
    synthetic_batch,
    trainable_optimizer,
    training_step,
)

from weclip_hf.host_memory import retain_freed_host_memory
from weclip_hf.inference import longest_edge_size, multiscale_flip_logits
from weclip_hf.par_triton import triton_available
from weclip_hf.presets import METHOD_NAMES, evaluation_of_config
from weclip_hf.script_arguments import add_device_flag

# --------------------------------------------------------------------------------------------------
# Arguments


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter
    )
    add_device_flag(p)
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
    p.add_argument("--seed", type=int, default=0, help="seed of the random weights and inputs (default 0)")
    p.add_argument(
        "--output_json",
        default=None,
        help="also write every figure to this JSON file (where a phase fails: those of the phases done, and "
        "its error)",
    )
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
    args.batch_sizes, args.infer_sizes = int_list(args.batch_sizes), int_list(args.infer_sizes)
    args.rfm = rfm_settings(args.rfm)
    if args.compile_mode is None and args.compile_backend == "inductor":  # modes are Inductor's
        args.compile_mode = "reduce-overhead" if args.device.startswith("cuda") else "default"
    if args.peak_tflops is None and args.device.startswith("cuda"):
        args.peak_tflops = 800.0
    return args


# --------------------------------------------------------------------------------------------------
# Measurements


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


def measure_inference(args, bench, model) -> list[dict]:
    """CLIP + decoder only (`model(pixel_values)`): single scale and multi-scale + flip at the model's evaluation
    scales (`evaluation_of_config`: WeCLIP 1.0, 0.75; WeCLIP+ 1.0, 1.5), timed side by side with a plain CLIP
    forward of the same batch (runs interleaved)."""
    device = bench.device
    model.eval()
    scales = evaluation_of_config(model.config).msf_scales
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
                return multiscale_flip_logits(model, pixel_values, scales)

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
                    scales=[1.0] if mode == "single" else list(scales),
                    batch=args.infer_batch_size,
                    seconds=medians[mode],
                    clip_forward_seconds=medians["clip"],
                    images_per_s=args.infer_batch_size / medians[mode],
                )
            )
    return rows


# --------------------------------------------------------------------------------------------------
# The run


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


def measure_all(args, bench, result: dict) -> None:
    """Every measurement the flags ask for, each phase's figures added to ``result`` as it ends."""
    device = bench.device
    model = compiled(args, build_model(args.tiny, device, args.seed))
    optimizer = trainable_optimizer(model)
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


def report(args, result: dict) -> None:
    """Prints the tables of ``result`` and writes it to ``--output_json``: those of the phases done where a later
    one failed (``result["error"]`` says which error stopped the run)."""
    print()
    if "error" in result:
        print(f"The run stopped at {result['error']}: the figures of the phases done before it.\n")
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
    try:
        measure_all(args, bench, result)
    # a failed (or interrupted) phase: the tables and JSON of those done, then its error
    except BaseException as error:
        result["error"] = f"{type(error).__name__}: {error}"
        raise
    finally:
        result["total_seconds"] = time.perf_counter() - start
        report(args, result)
    return result


if __name__ == "__main__":
    main()
