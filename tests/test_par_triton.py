"""PAR's Triton kernels (`weclip_hf.par_triton`, what `par_affinity` and `par_iteration` run on CUDA) against the
eager path: on a CPU under Triton's interpreter (a subprocess with ``TRITON_INTERPRET=1``, which must be set before
Triton compiles anything), and on a GPU when there is one."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from weclip_hf.par import (
    par_affinity,
    par_affinity_eager,
    par_iteration,
    par_iteration_eager,
    par_refine,
    ring_offsets,
)
from weclip_hf.par_triton import triton_available

# (batch, maps, height, width, dilations): odd sizes that are no multiple of the kernel's block; one map; 21 maps
# (VOC with every class, 32 map slots in the kernel); dilations larger than the image (every neighbour clamped)
CASES = [
    (2, 3, 13, 21, [1, 2, 4, 8, 12, 24]),
    (1, 1, 5, 4, [1, 3]),
    (2, 21, 9, 11, [1, 2, 4]),
    (1, 2, 17, 16, [1, 2, 4, 8, 12, 24]),
]


def kernel_vs_eager(device: str) -> dict:
    """Max abs differences between the kernels (`par_affinity`, `par_iteration` on ``device``) and the eager path
    (on the CPU) for each case, and between `par_refine` (5 iterations) and the eager path on the last (the
    interpreter runs a kernel's programs one by one: small cases keep the test at seconds)."""
    g = torch.Generator().manual_seed(0)
    diffs = {}
    for b, c, h, w, dilations in CASES:
        image = torch.randn(b, 3, h, w, generator=g)
        scores = torch.rand(b, c, h, w, generator=g)
        weights = par_affinity_eager(image, dilations)
        ours = par_affinity(image.to(device), dilations).cpu()
        diffs[f"weights {b}x3x{h}x{w} d={dilations}"] = float((ours - weights).abs().max())
        ours = par_iteration(scores.to(device), weights.to(device), dilations).cpu()
        expected = par_iteration_eager(scores, weights, dilations)
        diffs[f"iteration {b}x{c}x{h}x{w} d={dilations}"] = float((ours - expected).abs().max())
    b, c, h, w, dilations = CASES[-1]
    image, scores = torch.randn(b, 3, h, w, generator=g), torch.rand(b, c, h, w, generator=g)
    weights, expected = par_affinity_eager(image, dilations), scores
    for _ in range(5):
        expected = par_iteration_eager(expected, weights, dilations)
    refined = par_refine(image.to(device), scores.to(device), dilations, num_iter=5).cpu()
    diffs["par_refine, 5 iterations"] = float((refined - expected).abs().max())
    # a failed launch would have turned the kernels off: the eager path compared with itself
    assert triton_available(image.to(device)), "PAR's kernels could not launch: the eager path ran"
    return diffs


def test_kernels_match_the_eager_path_under_the_interpreter():
    if os.environ.get("TRITON_INTERPRET") == "1":
        pytest.skip("this test starts the interpreter itself")
    pytest.importorskip("triton", reason="Triton is not installed (it comes with the dev extras on Linux)")
    code = (
        "import json, sys; sys.path.insert(0, sys.argv[1]); import torch; "
        "from weclip_hf.par_triton import triton_available; "
        "assert triton_available(torch.zeros(1)), 'the interpreter did not take the kernel path'; "
        "from test_par_triton import kernel_vs_eager; print(json.dumps(kernel_vs_eager('cpu')))"
    )
    run = subprocess.run(
        [sys.executable, "-c", code, str(Path(__file__).parent)],
        env={**os.environ, "TRITON_INTERPRET": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    diffs = json.loads(run.stdout.strip().splitlines()[-1])
    assert len(diffs) == 2 * len(CASES) + 1
    assert_close_to_eager(diffs)


def assert_close_to_eager(diffs: dict) -> None:
    """float32 sums in another order than the eager path's: a few ulps of weights and scores in [0, 1] per pass
    (measured under the interpreter: <= 1e-6 per pass, 1.5e-6 after 5 iterations)."""
    for name, diff in diffs.items():
        assert diff <= (1e-5 if name.startswith("par_refine") else 3e-6), diffs


@pytest.mark.skipif(
    not torch.cuda.is_available(), reason="no CUDA device (the interpreter test covers the kernel)"
)
def test_kernels_match_the_eager_path_on_cuda():
    assert_close_to_eager(kernel_vs_eager("cuda"))
    # a training-size refinement on the GPU: 20 iterations at 320x320, the labels (argmax) as the model takes them
    g = torch.Generator().manual_seed(1)
    image = torch.nn.functional.interpolate(
        torch.randn(2, 3, 10, 10, generator=g), size=(320, 320), mode="bilinear"
    )
    image, scores = image.cuda(), torch.rand(2, 3, 320, 320, generator=g).cuda()
    dilations = [1, 2, 4, 8, 12, 24]
    refined = par_refine(image, scores, dilations)
    weights, expected = par_affinity_eager(image, dilations), scores
    for _ in range(20):
        expected = par_iteration_eager(expected, weights, dilations)
    assert float((refined - expected).abs().max()) <= 1e-4
    assert (refined.argmax(1) == expected.argmax(1)).float().mean() >= 0.999


def test_cuda_devices_older_than_triton_supports_take_the_eager_path(monkeypatch):
    from weclip_hf import par_triton

    par_triton._compiles_for.cache_clear()
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda index: {0: (6, 1), 1: (9, 0)}[index])
    try:
        assert not par_triton._compiles_for(0) and par_triton._compiles_for(1)
    finally:
        par_triton._compiles_for.cache_clear()


def test_kernel_inputs_are_checked_before_a_launch():
    """The kernels index without bounds checks: a wrongly shaped or typed input is refused with its name."""
    pytest.importorskip("triton", reason="Triton is not installed (it comes with the dev extras on Linux)")
    from weclip_hf.par import ring_offsets
    from weclip_hf.par_triton import par_affinity_triton, par_iteration_triton

    offsets = ring_offsets((1, 2), torch.device("cpu"))  # 16 neighbours
    scores = torch.rand(2, 3, 5, 6)
    with pytest.raises(ValueError, match=r"weights of shape \(16, 1, 5, 6\)"):
        par_iteration_triton(scores, torch.rand(16, 1, 5, 6), offsets)
    with pytest.raises(ValueError, match="offsets"):
        par_iteration_triton(scores, torch.rand(16, 2, 5, 6), offsets.long())
    with pytest.raises(ValueError, match=r"position of shape \(8,\)"):
        par_affinity_triton(torch.rand(2, 3, 5, 6), offsets, torch.rand(8), 0.3, 0.01)


def test_the_kernels_are_not_taken_where_a_gradient_is_asked_for(monkeypatch):
    """The kernels have no backward: a tensor that requires grad (with grad enabled) takes the eager path."""
    from weclip_hf import par_triton

    if par_triton.kernels() is None:
        pytest.skip("Triton is not installed (it comes with the dev extras on Linux)")
    monkeypatch.setattr(par_triton, "INTERPRETING", True)  # "a device the kernels run on"
    x = torch.zeros(2, requires_grad=True)
    assert par_triton.triton_available(torch.zeros(2))
    assert not par_triton.triton_available(x) and not par_triton.triton_available(torch.zeros(2).double())
    with torch.no_grad():
        assert par_triton.triton_available(x)


def test_empty_inputs_launch_nothing():
    """No map, no image or no pixel: an empty result of the right shape, without a kernel launch."""
    pytest.importorskip("triton", reason="Triton is not installed (it comes with the dev extras on Linux)")
    from weclip_hf.par import ring_offsets
    from weclip_hf.par_triton import par_affinity_triton, par_iteration_triton

    offsets = ring_offsets((1,), torch.device("cpu"))
    for b, c, h, w in [(2, 0, 5, 6), (0, 3, 5, 6), (2, 3, 0, 6)]:
        scores, weights = torch.rand(b, c, h, w), torch.rand(8, b, h, w)
        assert par_iteration_triton(scores, weights, offsets).shape == (b, c, h, w)
    assert par_affinity_triton(torch.rand(0, 3, 5, 6), offsets, torch.rand(8), 0.3, 0.01).shape == (
        8,
        0,
        5,
        6,
    )


def test_the_kernels_are_imported_only_where_they_run():
    """A CPU run (no interpreter) decides without importing the kernels' module (Triton would define them)."""
    code = (
        "import sys, torch; from weclip_hf.par import par_refine; "
        "par_refine(torch.rand(1, 3, 8, 8), torch.rand(1, 2, 8, 8), [1, 2], num_iter=2); "
        "print('weclip_hf.par_kernels' in sys.modules)"
    )
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.strip().splitlines()[-1] == "False"


def test_a_changed_interpreter_switch_takes_the_eager_path(monkeypatch):
    """Triton defines the kernels interpreted or compiled when they are first imported: where TRITON_INTERPRET
    changed since `par_triton` read it, the kernels are not loaded (the eager path runs), and a direct launch
    says why."""
    from weclip_hf import par_triton
    from weclip_hf.par import ring_offsets

    par_triton.kernels.cache_clear()
    monkeypatch.setenv("TRITON_INTERPRET", "0" if par_triton.INTERPRETING else "1")
    try:
        assert par_triton.kernels() is None and not par_triton.triton_available(torch.zeros(2))
        offsets = ring_offsets((1,), torch.device("cpu"))
        with pytest.raises(RuntimeError, match="TRITON_INTERPRET changed"):
            par_triton.par_iteration_triton(torch.rand(1, 2, 5, 6), torch.rand(8, 1, 5, 6), offsets)
    finally:
        par_triton.kernels.cache_clear()


def test_a_kernel_that_cannot_launch_turns_the_kernels_off_for_the_eager_path(monkeypatch, caplog):
    """Triton builds a kernel's launcher at its first launch: where it cannot (no C compiler, an unwritable cache, a
    GPU its ptxas does not know), `par_refine` gives the eager path's result, with one warning naming the cause, and
    later calls take the eager path without trying again. A call that does not fit the kernel is not hidden."""
    from weclip_hf import par_triton

    if par_triton.kernels() is None:
        pytest.skip("Triton is not installed (it comes with the dev extras on Linux)")
    no_compiler = RuntimeError(
        "Failed to find C compiler. Please specify via CC environment variable or set triton.knobs.build.impl."
    )
    launches = []

    class FailingKernel:
        """A kernel whose launch raises ``error`` (as Triton's launch does where it cannot build the launcher)."""

        def __init__(self, error: Exception):
            self.error = error

        def __getitem__(self, grid):
            def launch(*args, **meta):
                launches.append(grid)
                raise self.error

            return launch

    loaded = par_triton.kernels()
    failing = loaded._replace(affinity=FailingKernel(no_compiler), iteration=FailingKernel(no_compiler))
    monkeypatch.setattr(par_triton, "kernels", lambda: failing)
    # a device the kernels run on (this CPU); the failure's record is reset after the test
    monkeypatch.setattr(par_triton, "INTERPRETING", True)
    monkeypatch.setattr(par_triton, "_launch_failure", None, raising=False)
    g = torch.Generator().manual_seed(0)
    image, scores, dilations = (
        torch.randn(2, 3, 9, 11, generator=g),
        torch.rand(2, 3, 9, 11, generator=g),
        [1, 2],
    )
    weights, expected = par_affinity_eager(image, dilations), scores
    for _ in range(3):
        expected = par_iteration_eager(expected, weights, dilations)
    with caplog.at_level("WARNING"):
        refined = par_refine(image, scores, dilations, num_iter=3)
        again = par_refine(image, scores, dilations, num_iter=3)
    assert torch.equal(refined, expected) and torch.equal(again, expected)
    assert len(launches) == 1 and not par_triton.triton_available(image)
    warnings = [record.getMessage() for record in caplog.records if "cannot launch" in record.getMessage()]
    assert len(warnings) == 1 and str(no_compiler) in warnings[0], caplog.text
    # a direct launch says why
    offsets = ring_offsets((1,), torch.device("cpu"))
    with pytest.raises(par_triton.KernelLaunchError, match="Failed to find C compiler"):
        par_triton.par_iteration_triton(torch.rand(1, 2, 5, 6), torch.rand(8, 1, 5, 6), offsets)
    # a call that does not fit the kernel (Triton binds the arguments first) is a bug to see, not a fallback
    monkeypatch.setattr(par_triton, "_launch_failure", None)
    wrong_call = TypeError("dynamic_func() missing 1 required positional argument: 'BLOCK'")
    monkeypatch.setattr(par_triton, "kernels", lambda: loaded._replace(iteration=FailingKernel(wrong_call)))
    with pytest.raises(TypeError, match="BLOCK"):
        par_iteration(torch.rand(1, 2, 5, 6), torch.rand(8, 1, 5, 6), [1])
    assert par_triton.triton_available(image)
