"""Dense CRF benchmark: ours (`weclip_hf.crf.dense_crf`, WeCLIP's evaluation setting) against pydensecrf (the
C++ permutohedral lattice WeCLIP's evaluation calls) on the same inputs: time per input, where the time goes, and
how far the outputs agree. BENCHMARKS.md, section "Dense CRF".

    python examples/benchmark_crf.py --device cpu --num_threads 1                 # synthetic scenes
    python examples/benchmark_crf.py --device cpu --num_threads 1 --crf_images ../shared/data/voc-mini --crf_count 14

pydensecrf is optional (``pip install pydensecrf2``); without it only ours is timed. Times are medians over
``--repeats`` runs after ``--warmup`` runs: wall seconds, and on a CPU the process CPU seconds (pydensecrf runs
one thread).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import torch
import torch.nn.functional as F

from weclip_hf import crf as dense_crf_module
from weclip_hf.permutohedral_lattice import build_lattice
from weclip_hf.script_arguments import add_device_flag


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_device_flag(p)
    p.add_argument("--num_threads", type=int, default=None, help="torch.set_num_threads for the run")
    p.add_argument(
        "--crf_images",
        default=None,
        help="VOC-layout folder (JPEGImages/, SegmentationClass/) whose photos, centre-cropped to "
        "--crf_size (smaller ones left out), and blurred / shifted noisy ground truth are the CRF inputs (default: "
        "synthetic)",
    )
    p.add_argument(
        "--crf_count", type=int, default=3, help="CRF inputs (images x easy/hard), default 3 images"
    )
    p.add_argument("--crf_size", type=int, default=513, help="CRF image side (default 513)")
    p.add_argument("--crf_classes", type=int, default=21, help="CRF classes (default 21)")
    p.add_argument(
        "--crf_batch_size",
        type=int,
        default=4,
        help="also time ours on the first N inputs as one batch (default 4; 0: skip)",
    )
    p.add_argument("--warmup", type=int, default=1, help="warm-up runs (default 1)")
    p.add_argument("--repeats", type=int, default=3, help="timed runs (default 3)")
    p.add_argument("--seed", type=int, default=0, help="seed of the synthetic CRF inputs (default 0)")
    p.add_argument("--output_json", default=None, help="also write every figure to this JSON file")
    return p.parse_args(argv)


def synchronizer(device: torch.device) -> Callable[[], None]:
    """What to call before reading the clock: `torch.cuda.synchronize` on CUDA, nothing elsewhere."""
    return (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)


def crf_inputs(args) -> list[tuple[str, np.ndarray, torch.Tensor]]:
    """(name, `[S, S, 3]` uint8 image, `[C, S, S]` probabilities): easy (blurred ground truth) and hard
    (shifted by 10 px, blurred, noisy) soft inputs per image; VOC photos or synthetic scenes."""
    from PIL import Image

    size, num_classes, g = args.crf_size, args.crf_classes, torch.Generator().manual_seed(args.seed)
    scenes = []
    if args.crf_images:
        root = Path(args.crf_images)
        for path in sorted((root / "JPEGImages").glob("*.jpg")):
            image = Image.open(path).convert("RGB")
            if min(image.size) < size:  # PIL would pad the crop with black: another input than a photo
                print(
                    f"Note: {path.name} ({image.width} x {image.height}) is smaller than --crf_size {size}: left out"
                )
                continue
            if len(scenes) == args.crf_count:
                break
            mask = Image.open(root / "SegmentationClass" / f"{path.stem}.png")
            top, left = (image.height - size) // 2, (image.width - size) // 2
            box = (left, top, left + size, top + size)
            labels = torch.from_numpy(np.array(mask.crop(box)).astype(np.int64))
            scenes.append(
                (path.stem, np.array(image.crop(box)), torch.where(labels >= num_classes, 0, labels))
            )
        if not scenes:
            raise ValueError(f"No photo of {root / 'JPEGImages'} is at least --crf_size {size} on each side.")
    else:
        for i in range(args.crf_count):  # smooth random regions of 1-4 classes with class colours + noise
            coarse = torch.randn(num_classes, size // 64 + 2, size // 64 + 2, generator=g)
            labels = F.interpolate(coarse[None], size=(size, size), mode="bicubic")[0].argmax(0)
            labels = torch.where(labels % (num_classes // (1 + i % 4)) == 0, labels, 0)
            colours = torch.rand(num_classes, 3, generator=g) * 255
            image = colours[labels] + 12 * torch.randn(size, size, 3, generator=g)
            scenes.append((f"synthetic_{i}", image.clamp(0, 255).to(torch.uint8).numpy(), labels))
    inputs = []
    for name, image, labels in scenes:
        onehot = F.one_hot(labels, num_classes).permute(2, 0, 1).float()[None]
        for kind in ("easy", "hard"):
            if kind == "hard":
                onehot_k = torch.roll(onehot, shifts=(10, -10), dims=(2, 3))
                logits = 4 * F.avg_pool2d(onehot_k, 21, 1, 10, count_include_pad=False)
                logits = logits + 1.5 * torch.randn(logits.shape, generator=g)
            else:
                logits = 6 * F.avg_pool2d(onehot, 15, 1, 7, count_include_pad=False)
                logits = logits + 0.5 * torch.randn(logits.shape, generator=g)
            inputs.append((f"{name} {kind}", image, logits.softmax(dim=1)[0]))
    return inputs


def _timed(fn, warmup: int, repeats: int, sync) -> tuple[float, float]:
    """Median wall and process CPU seconds of `fn` (after `warmup` calls)."""
    for _ in range(warmup):
        fn()
    sync()
    wall, cpu = [], []
    for _ in range(repeats):
        start_wall, start_cpu = time.perf_counter(), time.process_time()
        fn()
        sync()
        wall.append(time.perf_counter() - start_wall)
        cpu.append(time.process_time() - start_cpu)
    return statistics.median(wall), statistics.median(cpu)


def _crf_breakdown(image: torch.Tensor, probs: torch.Tensor, params, repeats: int, sync) -> dict:
    """Seconds of our CRF's pieces: both lattice builds, the normalisation/table setup, one iteration's
    splat + blur + slice (all classes, both kernels, unary added), one softmax."""
    crf = dense_crf_module
    probs = probs[None].float()
    height, width = probs.shape[-2:]
    position = crf._positions(1, height, width, torch.float32, probs.device)
    colour = image[None].float().flatten(2).transpose(1, 2)
    bilateral = torch.cat([position / params.bi_xy_std, colour / params.bi_rgb_std], dim=-1)
    lattices = [build_lattice(bilateral), build_lattice(position / params.pos_xy_std)]
    energy = crf._MeanFieldEnergy(lattices, [params.bi_w, params.pos_w], probs)
    q = energy.log_unary.softmax(dim=1)
    pieces = {
        "lattice_bilateral": lambda: build_lattice(bilateral),
        "lattice_smoothness": lambda: build_lattice(position / params.pos_xy_std),
        "normalisation_setup": lambda: crf._MeanFieldEnergy(lattices, [params.bi_w, params.pos_w], probs),
        "iteration_filtering": lambda: energy(q),
        "iteration_softmax": lambda: energy(q).softmax(dim=1),
    }
    seconds = {
        name: _timed(fn, 1, repeats, sync)[1 if probs.device.type == "cpu" else 0]
        for name, fn in pieces.items()
    }
    seconds["iteration_softmax"] = max(seconds["iteration_softmax"] - seconds["iteration_filtering"], 0.0)
    seconds["vertices"] = {"bilateral": lattices[0].num_vertices, "smoothness": lattices[1].num_vertices}
    return seconds


def _pydensecrf(dcrf, image: np.ndarray, unary: np.ndarray, params, times: dict | None = None) -> np.ndarray:
    """pydensecrf as WeCLIP's `crf_proc` calls it: `[C, H * W]` float32 unary, `[H, W, 3]` uint8 image ->
    `[C, H * W]` probabilities; `times` (if given) collects the process CPU seconds of each step."""
    clock = [time.process_time()]

    def lap(name: str) -> None:
        now = time.process_time()
        if times is not None:
            times.setdefault(name, []).append(now - clock[0])
        clock[0] = now

    model = dcrf.DenseCRF2D(image.shape[1], image.shape[0], unary.shape[0])
    model.setUnaryEnergy(unary)
    lap("unary")
    model.addPairwiseGaussian(sxy=params.pos_xy_std, compat=params.pos_w)
    lap("lattice_smoothness")
    model.addPairwiseBilateral(sxy=params.bi_xy_std, srgb=params.bi_rgb_std, rgbim=image, compat=params.bi_w)
    lap("lattice_bilateral")
    out = np.array(model.inference(params.num_iters))
    lap("inference")
    return out


def measure_crf(args, device: torch.device) -> dict:
    """Dense CRF (WeCLIP's evaluation setting) of each input: ours on --device and pydensecrf (one CPU
    thread, the C++ permutohedral lattice) on the same inputs; agreement and where the time goes."""
    try:
        import pydensecrf.densecrf as dcrf
    except ImportError:
        dcrf = None
        print("  pydensecrf is not installed (pip install pydensecrf2): timing ours only", flush=True)
    params, sync = dense_crf_module.WECLIP, synchronizer(device)
    inputs = crf_inputs(args)
    warmup, repeats = args.warmup, args.repeats
    rows, last = [], {}
    for name, image, probs in inputs:
        image_t = torch.from_numpy(image).permute(2, 0, 1).to(device)
        probs_d = probs.to(device)

        def ours(image_t=image_t, probs_d=probs_d):
            last["ours"] = dense_crf_module.dense_crf(image_t, probs_d, params)

        ours_wall, ours_cpu = _timed(ours, warmup, repeats, sync)
        row = dict(
            input=name,
            size=list(image.shape[:2]),
            classes=probs.shape[0],
            ours_seconds=ours_wall,
            ours_cpu_seconds=ours_cpu if device.type == "cpu" else None,
            ours_breakdown=_crf_breakdown(image_t, probs_d, params, repeats, sync),
        )
        if dcrf is not None:
            unary = -np.log(np.clip(probs.numpy(), 1e-5, 1.0)).reshape(probs.shape[0], -1)
            unary, image_c = np.ascontiguousarray(unary, dtype=np.float32), np.ascontiguousarray(image)

            def reference(image_c=image_c, unary=unary):
                last["ref"] = _pydensecrf(dcrf, image_c, unary, params)

            ref_wall, ref_cpu = _timed(reference, warmup, repeats, lambda: None)
            times: dict[str, list[float]] = {}
            for _ in range(repeats):
                _pydensecrf(dcrf, image_c, unary, params, times)
            ours_probs = last["ours"].float().cpu().numpy().reshape(probs.shape[0], -1)
            row.update(
                reference_seconds=ref_wall,
                reference_cpu_seconds=ref_cpu,
                reference_breakdown={key: statistics.median(v) for key, v in times.items()},
                equal_labels=float((ours_probs.argmax(0) == last["ref"].argmax(0)).mean()),
                max_abs_diff=float(np.abs(ours_probs - last["ref"]).max()),
            )
        rows.append(row)
        summary = f"  CRF {name}: ours {row['ours_seconds']:.3f} s"
        if dcrf is not None:
            summary += f", pydensecrf {row['reference_seconds']:.3f} s, {100 * row['equal_labels']:.4f}% equal labels"
        print(summary, flush=True)
    batch = inputs[: args.crf_batch_size]
    if len(batch) > 1:  # several inputs as one batch on our side (the way a GPU evaluation would run them)
        images = torch.from_numpy(np.stack([image for _, image, _ in batch])).permute(0, 3, 1, 2).to(device)
        probs = torch.stack([probs for _, _, probs in batch]).to(device)
        wall, cpu = _timed(
            lambda: dense_crf_module.dense_crf(images, probs, params), min(warmup, 1), repeats, sync
        )
        rows.append(
            dict(
                input=f"first {len(batch)} as one batch",
                size=list(images.shape[-2:]),
                classes=probs.shape[1],
                batch=len(batch),
                ours_seconds=wall,
                ours_cpu_seconds=cpu if device.type == "cpu" else None,
            )
        )
    return dict(params=dataclasses.asdict(params), rows=rows, pydensecrf=dcrf is not None)


def render_crf(result: dict) -> str:
    """Tables: time per input (ours vs pydensecrf, ratio, agreement) and the time breakdown."""
    crf = result["crf"]
    cpu = result["env"]["device_type"] == "cpu"
    p = crf["params"]
    lines = [
        f"Dense CRF, WeCLIP's setting ({p['num_iters']} iterations, pos {p['pos_w']}/{p['pos_xy_std']}, "
        f"bilateral {p['bi_w']}/{p['bi_xy_std']}/{p['bi_rgb_std']}); {result['env']['threads']} torch "
        f"thread(s); pydensecrf is single-threaded C++ on the CPU. Times: median wall s (process CPU s).",
        "",
        "| input | size, classes | ours | pydensecrf | ours / pydensecrf | equal labels | max abs diff |",
        "|---|---|---|---|---|---|---|",
    ]

    def t(row, key):
        value = row.get(f"{key}_seconds")
        if value is None:
            return "-"
        cpu_value = row.get(f"{key}_cpu_seconds")
        return f"{value:.3f}" + (f" ({cpu_value:.3f})" if cpu and cpu_value is not None else "")

    for row in crf["rows"]:
        ratio = equal = diff = "-"
        if "reference_seconds" in row:
            ours = row["ours_cpu_seconds"] if cpu else row["ours_seconds"]
            ratio = f"**{ours / (row['reference_cpu_seconds'] if cpu else row['reference_seconds']):.2f}**"
            equal, diff = f"{100 * row['equal_labels']:.4f}%", f"{row['max_abs_diff']:.1e}"
        lines.append(
            f"| {row['input']} | {row['size'][0]}x{row['size'][1]}, {row['classes']} | {t(row, 'ours')} | "
            f"{t(row, 'reference')} | {ratio} | {equal} | {diff} |"
        )
    rows = [row for row in crf["rows"] if "ours_breakdown" in row]
    if rows:

        def med(side, key):
            values = [row[f"{side}_breakdown"][key] for row in rows if f"{side}_breakdown" in row]
            return statistics.median(values) * 1e3 if values else float("nan")

        n = p["num_iters"]
        lines += [
            "",
            f"Where the time goes (median over the inputs, ms{' of process CPU time' if cpu else ''}):",
            "",
            "| piece | ours | pydensecrf |",
            "|---|---|---|",
            f"| lattice, bilateral kernel (5-D) | {med('ours', 'lattice_bilateral'):.0f} | "
            f"{med('reference', 'lattice_bilateral'):.0f} |",
            f"| lattice, smoothness kernel (2-D) | {med('ours', 'lattice_smoothness'):.0f} | "
            f"{med('reference', 'lattice_smoothness'):.0f} |",
            f"| normalisation + unary setup | {med('ours', 'normalisation_setup'):.0f} | "
            f"{med('reference', 'unary'):.0f} (unary) |",
            f"| one iteration: splat + blur + slice, all classes, both kernels | "
            f"{med('ours', 'iteration_filtering'):.1f} | |",
            f"| one iteration: softmax | {med('ours', 'iteration_softmax'):.1f} | |",
            f"| {n} iterations (ours: {n} x the two rows above) | "
            f"{n * (med('ours', 'iteration_filtering') + med('ours', 'iteration_softmax')):.0f} | "
            f"{med('reference', 'inference'):.0f} (`inference({n})`) |",
        ]
    return "\n".join(lines)


def _cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (Linux), else the platform's processor string."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment(device: torch.device) -> dict:
    env = dict(
        device_type=device.type,
        torch=torch.__version__,
        python=platform.python_version(),
        threads=torch.get_num_threads(),
        cpu=platform.processor() or platform.machine(),
        cpu_model=_cpu_model(),
    )
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
    return env


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.num_threads:
        torch.set_num_threads(args.num_threads)
    device = torch.device(args.device)
    start = time.perf_counter()
    result = dict(env=environment(device), args=dict(vars(args)))
    print(f"# Dense CRF benchmark: {result['env']}", flush=True)
    result["crf"] = measure_crf(args, device)
    result["total_seconds"] = time.perf_counter() - start
    print()
    print(render_crf(result))
    if args.output_json:
        Path(args.output_json).write_text(json.dumps(result, indent=2, default=str))
    return result


if __name__ == "__main__":
    main()
