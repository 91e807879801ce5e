"""PAR's measurements: its iterations under `torch.compile` (the eager function, and `ring_sum`) and its Triton
kernels, each against the eager path on the same inputs."""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from weclip_hf.chunking import images_per_chunk
from weclip_hf.par import par_affinity, par_affinity_eager, par_iteration, par_iteration_eager, ring_offsets


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
