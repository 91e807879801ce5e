"""The benchmark's tiny CPU mode runs end to end (so it cannot rot) and reports both pseudo-label paths,
the PAR paths (eager, torch.compile; PAR's Triton kernels under Triton's interpreter) and WeCLIP+ next to WeCLIP."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import example_module

REPO = Path(__file__).resolve().parents[1]


def run_offline(command: list[str], timeout: int, **env) -> str:
    """Run ``command`` from the repository root offline (extra ``env`` variables); its stdout, asserting success."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_VERBOSITY="error", **env)
    proc = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return proc.stdout


def check_tiny_report(out: str) -> None:
    """The tables of `benchmark.py --tiny --method weclip_plus --profile_ops` (with the reference path)."""
    assert "| section | setting | ours | reference | ratio |" in out
    assert "| train step |" in out and "| inference (CLIP + decoder) |" in out and "| share: PAR |" in out
    # PAR as the model runs it (the margins) next to the official form (the scores), with their labels' agreement
    par_forms = re.findall(
        r"\| PAR on the classes' margins \(the model\) vs on the \[background, classes\] scores \|[^|]*\| "
        r"[\d.]+ ms margins \(labels ([\d.]+)% equal\) \| [\d.]+ ms scores \| \*\*[\d.]+x\*\* \|",
        out,
    )
    assert len(par_forms) == 2 and all(float(a) > 99.0 for a in par_forms), out
    # our batched path and the per-image/per-class reference, side by side, with a positive ratio
    ratios = re.findall(
        r"\| pseudo labels \(CLIP fwd[^|]*\|[^|]*\| [\d.]+ ms \| [\d.]+ ms \(cpu\) \| \*\*([\d.]+)x\*\* \|",
        out,
    )
    assert len(ratios) == 2 and all(float(r) > 0 for r in ratios), out
    agreement = [
        float(a) for a in re.findall(r"\| pseudo-label agreement \|[^|]*\| ([\d.]+)% equal pixels", out)
    ]
    assert len(agreement) == 2 and all(a > 99.0 for a in agreement), out
    # the step and inference side by side with a plain CLIP forward of the same batch: its time and the ratio
    step_ratios = re.findall(
        r"\| train step \|[^|]*\|[^|]*\| CLIP forward [\d.]+ ms \| \*\*([\d.]+)x\*\* \|", out
    )
    infer_ratios = re.findall(
        r"\| inference \(CLIP \+ decoder\) \|[^|]*\|[^|]*\| CLIP forward [\d.]+ ms \| \*\*([\d.]+)x", out
    )
    assert len(step_ratios) == 4 and len(infer_ratios) == 4 and all(float(r) > 0 for r in step_ratios), out
    # the page faults of one more step per setting (fresh memory the kernel maps and zeroes), freed host memory
    # retained on a CPU unless --release_host_memory
    assert len(re.findall(r"\| train step \|[^|]*\| [^|]*, [\d,]+ page faults/step, ", out)) == 4, out
    assert "'host_memory': 'retained'" in out
    # --method weclip_plus: WeCLIP+'s rows, and each of its settings against WeCLIP's (2 steps, 2 inference modes)
    assert len(re.findall(r"\| train step \| WeCLIP\+, batch 2, crop 64, RFM o(?:n|ff) \|", out)) == 2, out
    plus_vs_weclip = re.findall(
        r"\| WeCLIP\+ vs WeCLIP \|[^|]*\| [\d.]+ ms \| WeCLIP [\d.]+ ms \| \*\*([\d.]+)x", out
    )
    assert len(plus_vs_weclip) == 4 and all(float(r) > 0 for r in plus_vs_weclip), out
    assert "Host syncs in one training step" in out
    assert "Where one training step's time goes" in out
    check_profiled_operators(out, settings=4)


def check_profiled_operators(out: str, settings: int) -> None:
    """`--profile_ops`: per setting, the matrix products' share and the top operators of one step by self time,
    and the weclip_hf source lines that time comes from (innermost frame), shares in decreasing order."""
    profiles = re.findall(
        r"\| (WeCLIP\+?, batch 2, crop 64, RFM o(?:n|ff)) \| ([\d.]+) ms / ([\d.]+) ms \| ([\d.]+)% \| (.+) \|",
        out,
    )
    assert len(profiles) == settings, out
    for _, profiled, step, matrix, top in profiles:
        assert float(profiled) > 0 and float(step) > 0, out
        shares = [float(x) for x in re.findall(r" ([\d.]+)%", " " + top)]
        assert 0 < float(matrix) <= 100 and len(shares) == 8 and 0 < sum(shares) <= 100.05, top
        assert "aten::" in top and shares == sorted(shares, reverse=True), top
    where = re.findall(r"\| (WeCLIP\+?, batch 2, RFM o(?:n|ff)) \| (.+py\(\d+\): .+) \|", out)
    assert len(where) == settings, out
    for _, lines in where:
        shares = [float(x) for x in re.findall(r" ([\d.]+)%", lines)]
        assert 0 < sum(shares) <= 100.05 and shares == sorted(shares, reverse=True), lines


def test_gpu_script_runs_every_measurement_on_a_cpu(tmp_path):
    """`examples/benchmark_gpu.sh` (the one command of a GPU session) with --tiny on a CPU, end to end: its bf16 run
    is the benchmark with every table (both pseudo-label paths, the PAR forms, WeCLIP+ next to WeCLIP, operator
    profiles), its fp32 run adds PAR compiled vs eager; both JSON files; the half-precision part skipped without
    CUDA. (The benchmark's other flags have their own tests below.)"""
    run_offline(
        ["bash", str(REPO / "examples" / "benchmark_gpu.sh"), str(tmp_path), "--tiny", "--device", "cpu"]
        # the fp32 run's batch sizes are a GPU's (4,64): the tiny default instead
        + ["--batch_sizes", "2"],
        timeout=300,
        PYTHON=sys.executable,
    )
    check_tiny_report((tmp_path / "bench_bf16.log").read_text())
    assert "'autocast': 'bf16'" in (tmp_path / "bench_bf16.log").read_text()
    fp32 = (tmp_path / "bench_none.log").read_text()
    assert "'autocast': 'none'" in fp32 and len(re.findall(r"\| train step \|", fp32)) == 2
    check_profiled_operators(fp32, settings=2)
    # PAR iterations compiled (two forms) vs eager, side by side, computing the same function
    compiled = re.findall(
        r"\| PAR iterations: torch.compile \((.+?)\) vs eager \|.*max abs diff ([\d.e+-]+)\).*\*\*([\d.]+)x",
        fp32,
    )
    assert [form for form, _, _ in compiled] == ["the eager iteration", "ring sum, weights [B, H, K, W]"], (
        fp32
    )
    assert all(float(diff) < 1e-5 and float(ratio) > 0 for _, diff, ratio in compiled), fp32
    for precision in ("bf16", "none"):
        assert '"speedup"' in (tmp_path / f"bench_{precision}.json").read_text()
    assert "half-precision comparison is skipped" in (tmp_path / "half_precision.txt").read_text()
    import torch
    import transformers

    versions = (tmp_path / "gpu.txt").read_text().splitlines()[-1].split()
    assert versions[1:] == [torch.__version__, transformers.__version__], versions


def test_benchmark_times_par_kernels_against_eager_where_they_run():
    """Where PAR's Triton kernels run (CUDA; here Triton's interpreter on the CPU) the benchmark times them against
    the eager path on the same inputs and reports both rows with their differences."""
    pytest.importorskip("triton", reason="Triton is not installed (it comes with the dev extras on Linux)")
    code = (
        "import sys, torch; sys.path.insert(0, 'examples'); import benchmark as b; "
        "from benchmarking.instruments import Bench; from benchmarking.par_measurements import measure_par_kernels; "
        "from benchmarking.report import render_table; from benchmarking.workloads import build_model; "
        "args = b.parse_args(['--tiny', '--device', 'cpu', '--crop', '16', '--batch_sizes', '2', '--warmup', '0', "
        "'--repeats', '1']); model = build_model(True, torch.device('cpu'), 0); "
        "rows = [measure_par_kernels(args, Bench(torch.device('cpu')), model, 2)]; "
        "print(render_table(dict(env=dict(device_type='cpu'), training=[], breakdown=[], par_kernels=rows, "
        "par_compile=[], inference=[], reference=[])))"
    )
    out = run_offline([sys.executable, "-c", code], timeout=300, TRITON_INTERPRET="1")
    rows = re.findall(
        r"\| PAR (weights|iterations): Triton kernel vs eager \|.*max abs diff ([\d.e+-]+)\).*\*\*([\d.]+)x",
        out,
    )
    assert [name for name, _, _ in rows] == ["weights", "iterations"], out
    assert all(float(diff) < 1e-5 for _, diff, _ in rows), (
        out
    )  # (the interpreter is slow: no speed claim here)


def _example_module(name: str = "benchmark"):
    """A module of examples/ (default examples/benchmark.py; `benchmarking.instruments`...): `conftest.example_module`."""
    return example_module(name)


def test_flop_counter_counts_cpu_sdpa_like_eager_attention():
    """The CPU's fused attention kernel is missing from torch's FLOP formulas; the benchmark adds it."""
    import torch
    import torch.nn.functional as F

    FlopCounter = _example_module("benchmarking.instruments").FlopCounter

    q, k, v = torch.randn(3, 2, 4, 17, 8).unbind(0)
    counted = []
    for attention in (
        F.scaled_dot_product_attention,
        lambda q, k, v: (q @ k.transpose(-1, -2)).softmax(-1) @ v,
    ):
        counter = FlopCounter()
        with counter:
            attention(q, k, v)
        counted.append(counter.total)
    assert counted[0] == counted[1] == 2 * 2 * (2 * 4 * 17 * 17 * 8)  # two batched matmuls


def test_gpu_script_help_and_a_flag_for_the_output_folder(tmp_path):
    """`benchmark_gpu.sh --help` prints its usage and header (it ran ``mkdir -p --help``); a flag where the output
    folder goes is refused, naming it, before anything is made."""
    script = str(REPO / "examples" / "benchmark_gpu.sh")
    shown = subprocess.run(["bash", script, "--help"], capture_output=True, text=True, cwd=tmp_path)
    assert shown.returncode == 0 and shown.stdout.startswith("usage: bash examples/benchmark_gpu.sh OUT_DIR")
    assert "Writes OUT_DIR/gpu.txt" in shown.stdout
    refused = subprocess.run(["bash", script, "--tiny"], capture_output=True, text=True, cwd=tmp_path)
    assert refused.returncode == 2 and "the first argument is the output folder, got --tiny" in refused.stderr
    assert list(tmp_path.iterdir()) == []


def test_gpu_script_runs_every_measurement_when_one_fails(tmp_path):
    """GPU time is scarce: a failed run of `benchmark_gpu.sh` (here the first, bf16) does not skip the later ones;
    each one's exit status is listed at the end (and in status.txt), and the script exits 1. (A PYTHON that fails
    the bf16 benchmark and stands in for the others: the script's flow, in a second.)"""
    python = tmp_path / "python"
    python.write_text(
        "#!/usr/bin/env bash\n"
        'case " $* " in\n'
        '    *" examples/benchmark.py --autocast bf16 "*) echo "bf16 run crashed" >&2; exit 3 ;;\n'
        '    *" examples/benchmark.py "*) echo "benchmark run: $*"; exit 0 ;;\n'
        "esac\n"
        f'exec {sys.executable} "$@"\n'
    )
    python.chmod(0o755)
    out = tmp_path / "out"
    env = dict(os.environ, PYTHON=str(python), HF_HUB_OFFLINE="1")
    run = subprocess.run(
        ["bash", str(REPO / "examples" / "benchmark_gpu.sh"), str(out), "--tiny"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert run.returncode == 1, run.stdout + run.stderr
    assert "bf16 run crashed" in (out / "bench_bf16.log").read_text()
    assert "--autocast none" in (out / "bench_none.log").read_text()
    assert (out / "half_precision.txt").exists()
    statuses = ["Exit status of each measurement:", "  benchmark bf16: exit 3", "  benchmark none: exit 0"]
    assert (out / "status.txt").read_text().splitlines() == statuses
    assert run.stdout.splitlines()[-3:] == statuses and "1 measurement(s) failed" in run.stderr


def test_a_failed_phase_keeps_the_figures_of_the_phases_done(tmp_path, monkeypatch, capsys):
    """A crash in a late phase (here the profiler of --profile_ops) still prints the tables and writes the JSON of
    the phases done, with the error that stopped the run, then raises it."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    benchmark = _example_module()

    def crash(*args, **kwargs):
        raise RuntimeError("the profiler crashed")

    monkeypatch.setattr(benchmark, "operator_shares", crash)
    saved = tmp_path / "bench.json"
    flags = [
        "--tiny",
        "--device",
        "cpu",
        "--no_breakdown",
        "--no_reference",
        "--no_inference",
        "--profile_ops",
    ]
    # --release_host_memory: in this process, leave glibc's settings alone (as the test above)
    flags += ["--release_host_memory", "--output_json", str(saved)]
    with pytest.raises(RuntimeError, match="the profiler crashed"):
        benchmark.main(flags)
    result = json.loads(saved.read_text())
    assert result["error"] == "RuntimeError: the profiler crashed" and len(result["training"]) == 2
    printed = capsys.readouterr().out
    assert "The run stopped at RuntimeError: the profiler crashed" in printed
    assert len(re.findall(r"\| train step \|", printed)) == 2


def test_operator_shares_count_the_kernels_no_operator_launched():
    """On CUDA, kernels that no aten operator launched (PAR's Triton kernels) have no operator row; their time
    (all kernels' less the operators') is a row of its own, so that the shares add up to the profiled device time.
    On a CPU the operators' self times are the shares."""
    from types import SimpleNamespace

    instruments = _example_module("benchmarking.instruments")
    OUTSIDE_OPERATORS, shares_of_events = instruments.OUTSIDE_OPERATORS, instruments.shares_of_events
    from torch.autograd import DeviceType

    def event(key, device_type, device_us, cpu_us=0.0, annotation=False):
        return SimpleNamespace(
            key=key,
            device_type=device_type,
            self_device_time_total=device_us,
            self_cpu_time_total=cpu_us,
            is_user_annotation=annotation,
        )

    events = [
        event("aten::addmm", DeviceType.CPU, 600.0, 50.0),
        event("aten::mul", DeviceType.CPU, 100.0, 30.0),
        event("weclip::par_iteration_kernel", DeviceType.CPU, 0.0, 20.0),  # its Triton kernel is not linked
        event("sm90_gemm_kernel", DeviceType.CUDA, 600.0),
        event("elementwise_kernel", DeviceType.CUDA, 100.0),
        event("_par_iteration_kernel", DeviceType.CUDA, 300.0),
        # a record_function range on the device: a span over the kernels inside it, not a kernel of its own
        event("weclip::par_iteration_kernel", DeviceType.CUDA, 320.0, annotation=True),
    ]
    cuda = shares_of_events(events, cuda=True)
    assert [(o["op"], round(o["share"], 6)) for o in cuda["top"]] == [
        ("aten::addmm", 0.6),
        (OUTSIDE_OPERATORS, 0.3),
        ("aten::mul", 0.1),
    ]
    assert cuda["seconds"] == pytest.approx(1e-3) and cuda["matrix_products"] == pytest.approx(0.6)
    cpu = shares_of_events(events[:3], cuda=False)
    assert [o["op"] for o in cpu["top"]] == ["aten::addmm", "aten::mul", "weclip::par_iteration_kernel"]
    assert cpu["seconds"] == pytest.approx(100e-6) and cpu["matrix_products"] == pytest.approx(0.5)


def test_line_shares_group_operators_by_their_innermost_weclip_frame():
    """`--profile_ops`' source lines: each operator's self time goes to the innermost weclip_hf frame of its stack
    (or one row without such a frame); device-side rows and user annotations are not operators."""
    from types import SimpleNamespace

    instruments = _example_module("benchmarking.instruments")
    NO_FRAME, shares_of_lines = instruments.NO_FRAME, instruments.shares_of_lines
    from torch.autograd import DeviceType

    def event(us, stack, device_type=DeviceType.CPU, annotation=False):
        return SimpleNamespace(
            device_type=device_type, self_cpu_time_total=us, stack=stack, is_user_annotation=annotation
        )

    inner = "/x/weclip_hf/par.py(155): par_iteration_eager"
    outer = "/x/weclip_hf/modeling_weclip.py(769): refine_and_label"
    events = [
        event(300.0, [inner, outer, "/x/examples/benchmark.py(480): step"]),
        event(100.0, [outer]),
        event(100.0, [inner, outer]),
        event(500.0, ["/x/examples/benchmark.py(480): step"]),  # the backward, the optimizer
        event(900.0, [inner], annotation=True),
        event(900.0, [inner], device_type=DeviceType.CUDA),
    ]
    lines = shares_of_lines(events, cuda=False)
    assert [(o["line"], round(o["share"], 6)) for o in lines] == [
        (NO_FRAME, 0.5),
        ("par.py(155): par_iteration_eager", 0.4),
        ("modeling_weclip.py(769): refine_and_label", 0.1),
    ]


def test_compiled_model_is_timed_compiled_and_counted_eagerly(monkeypatch):
    """`--compile model`: the timed steps run the compiled forward (graphs exist after the run), and the first
    run, which counts FLOPs and host syncs under dispatch modes, runs eagerly: a frame first met under a dispatch
    mode would never be compiled, and compiled code would hide its operators from the counters."""
    import torch
    from torch._dynamo.utils import counters

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    benchmark = _example_module()
    # --release_host_memory: in this process, leave glibc's settings alone (the measurements of later tests'
    # memory growth would see retained pages)
    flags = ["--tiny", "--device", "cpu", "--rfm", "on", "--no_breakdown", "--no_reference", "--no_inference"]
    flags.append("--release_host_memory")
    eager = benchmark.main(flags)["training"][0]
    torch._dynamo.reset()
    counters.clear()
    result = benchmark.main([*flags, "--compile", "model", "--compile_backend", "aot_eager"])
    compiled = result["training"][0]
    assert result["env"]["compile"] == "model (aot_eager, None)"
    assert counters["stats"]["unique_graphs"] > 0
    assert compiled["gflop_per_image"] == eager["gflop_per_image"] > 0
    # the same syncs (the eager run's first step also made PAR's cached constants, a one-off copy)
    syncs = {s["where"] for s in compiled["host_syncs"]}
    assert syncs and syncs <= {s["where"] for s in eager["host_syncs"]}


def test_chunk_benchmark_times_each_chunk_size_and_restores_the_model(tmp_path):
    """`examples/benchmark_chunks.py` runs on the tiny model: every chunk size timed for the blocks and the step
    next to the plain forward; the model's own chunking is back afterwards."""
    import json

    output_json = tmp_path / "chunks.json"
    out = run_offline(
        [
            sys.executable,
            str(REPO / "examples" / "benchmark_chunks.py"),
            "--tiny",
            "--num_threads",
            "1",
            "--batch_sizes",
            "3",
            "--chunks",
            "1,2",
            "--crop",
            "64",
            "--warmup",
            "0",
            "--repeats",
            "1",
            "--output_json",
            str(output_json),
        ],
        timeout=120,
    )
    assert "| 3, off, training step |" in out and "| 3, on, first L-1 blocks |" in out
    rows = json.loads(output_json.read_text())["rows"]
    expected = {"blocks_1", "blocks_2", "chunk_1", "chunk_2", "clip_forward"}
    assert [(r["batch"], r["rfm"]) for r in rows] == [(3, False), (3, True)]
    assert all(set(r["seconds"]) == expected and min(r["seconds"].values()) > 0 for r in rows)

    benchmark_chunks = example_module("benchmark_chunks")

    import weclip_hf.chunking as chunking

    original = chunking.images_per_chunk
    with benchmark_chunks.images_per_chunk(2):
        assert chunking.images_per_attention_chunk(5, 401, 12, "cpu") == 2
        assert chunking.images_per_attention_chunk(1, 401, 12, "cpu") == 1
    assert chunking.images_per_chunk is original


def test_checkpointing_benchmark_counts_less_kept_for_backward_and_equal_gradients():
    """`examples/benchmark_checkpointing.py` on the tiny model: checkpointing keeps less for the backward (the
    decoder's blocks almost nothing) and gives the same gradients."""
    benchmark_checkpointing = example_module("benchmark_checkpointing")

    result = benchmark_checkpointing.main(["--tiny"])
    assert result["with"]["all"] < result["without"]["all"]
    assert result["with"]["decoder_blocks"] < 0.2 * result["without"]["decoder_blocks"]
    assert result["max_grad_difference"] == 0.0


def test_host_memory_benchmark_reports_the_faults_of_both_settings(tmp_path, capsys):
    """`examples/benchmark_host_memory.py`, two small allocations: its table and JSON (no figure claimed here: the
    faults depend on the kernel's transparent huge pages; the mechanism: tests/test_host_memory.py)."""
    output_json = tmp_path / "host_memory.json"
    argv = ["--size_mib", "8", "--warmup", "1", "--allocations", "2", "--output_json", str(output_json)]
    result = example_module("benchmark_host_memory").main(argv)
    out = capsys.readouterr().out
    assert out.startswith("2 allocations of 8 MiB after 1 (transparent huge pages: ")
    assert "| glibc's defaults | " in out and "| retained | " in out
    assert json.loads(output_json.read_text()) == result
    assert result["transparent_huge_pages"] in ("always", "madvise", "never", "unknown")
    assert all(isinstance(n, int) and n >= 0 for n in result["faults"].values()), result


def test_safe_loading_benchmark_reports_the_class_reader_and_a_refusal(tmp_path, capsys):
    """`examples/benchmark_safe_loading.py` on 1 and 2 MiB of spaces: its table and JSON (the times it measures are
    no claim here; what is refused and that nothing large is allocated first: tests/test_convert_hostile.py)."""
    output_json = tmp_path / "safe_loading.json"
    result = example_module("benchmark_safe_loading").main(
        ["--spaces_mib", "1", "--repeats", "1", "--output_json", str(output_json)]
    )
    out = capsys.readouterr().out
    assert "| class reader, 1 MiB of spaces | " in out and "| class reader, 2 MiB of spaces | " in out
    assert "| stride-0 view of 3e9 elements refused | " in out
    assert json.loads(output_json.read_text()) == result
    assert set(result) == {"class_reader", "stride0_refusal"}
    assert all(v > 0 for k, v in result["class_reader"].items() if k != "spaces_mib")


def test_half_precision_benchmark_reports_a_failed_dtype_and_runs_the_others(capsys):
    """`examples/benchmark_half_precision.py` measures each dtype in a subprocess: one that fails (here a dtype
    torch lacks) prints the end of its error and the next dtypes still run; the script then exits 1."""
    half_precision = _example_module("benchmark_half_precision")
    flags = ["--dtypes", "float8_nonesuch,float32", "--size", "16", "--batch_size", "1", "--repeats", "1"]
    with pytest.raises(SystemExit, match="float8_nonesuch failed"):
        half_precision.main(flags)
    printed = capsys.readouterr()
    assert "float8_nonesuch: failed (exit status 1)" in printed.err
    assert "AttributeError: module 'torch' has no attribute 'float8_nonesuch'" in printed.err
    assert re.search(r"\| float32 \| [\d.]+ s \| 1.00x \|", printed.out), printed.out


def test_benchmark_needs_neither_pytest_nor_hypothesis():
    """The benchmark runs on a GPU machine without the tests' dependencies: its tiny configs come from
    `tests/tiny_configs.py`, not from `conftest` (which imports pytest and hypothesis). Here they are absent (None in
    sys.modules: their import fails as an uninstalled package's)."""
    code = (
        "import runpy, sys\n"
        "for name in ('pytest', '_pytest', 'hypothesis'):\n"
        "    sys.modules[name] = None\n"
        "sys.path.insert(0, 'examples')\n"
        "sys.argv = ['examples/benchmark.py', '--help']\n"
        "runpy.run_path('examples/benchmark.py', run_name='__main__')\n"
    )
    out = run_offline([sys.executable, "-c", code], timeout=120)
    assert out.startswith("usage: benchmark.py"), out
