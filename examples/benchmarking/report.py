"""The benchmark's report: the result dict of `examples/benchmark.py` as Markdown tables (the measurements, the
host syncs, the operators' shares)."""

from __future__ import annotations

from weclip_hf.presets import METHOD_NAMES

GIB = 1024**3


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
    for b in result["breakdown"]:
        s = b["seconds"]
        add(
            "PAR on the classes' margins (the model) vs on the [background, classes] scores",
            f"batch {b['batch']}, RFM {'on' if b['rfm'] else 'off'}, {b['pairs']} pairs",
            f"{1e3 * s['par']:.1f} ms margins (labels {100 * b['par_labels_equal']:.4f}% equal)",
            f"{1e3 * s['par_on_scores']:.1f} ms scores",
            f"**{s['par_on_scores'] / s['par']:.2f}x**",
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
    mode = (
        "single scale" if row["mode"] == "single" else f"scales {', '.join(map(str, row['scales']))} + flip"
    )
    return f"{row['size'][0]}x{row['size'][1]}, {mode}, batch {row['batch']}"


def _method_prefix(row: dict) -> str:
    """ "WeCLIP+, " for a WeCLIP+ row (the WeCLIP rows keep their unprefixed settings)."""
    return "WeCLIP+, " if row.get("method") == "weclip_plus" else ""


def _method_pairs(result: dict) -> list[tuple[dict, dict, str]]:
    """(WeCLIP+ row, WeCLIP row, setting) for every training and inference setting measured for both: the
    multi-scale inference of each at its own evaluation scales (the WeCLIP row's named where they differ)."""
    pairs = []
    for key, describe in (
        ("training", lambda r: "train step, " + _training_setting(r)),
        ("inference", lambda r: "inference " + _inference_setting(r)),
    ):
        weclip = {_pair_key(r): r for r in result[key] if r.get("method", "weclip") == "weclip"}
        for row in result[key]:
            other = weclip.get(_pair_key(row))
            if row.get("method") == "weclip_plus" and other is not None:
                scales = other.get("scales", row.get("scales"))
                note = (
                    f" (WeCLIP: scales {', '.join(map(str, scales))})" if scales != row.get("scales") else ""
                )
                pairs.append((row, other, describe(row) + note))
    return pairs


def _pair_key(row: dict) -> tuple:
    """What a WeCLIP+ row and a WeCLIP row share to be compared: the setting, but the multi-scale inference's
    scales (each method's own)."""
    return tuple(sorted((k, str(v)) for k, v in row.items() if k in ("batch", "crop", "rfm", "size", "mode")))


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
