"""transformers' own generic test mixins for the installed transformers version, fetched at test time.

The transformers wheel ships no tests. Its sdist ships ``tests/test_*_common.py`` (ModelTesterMixin, ConfigTester,
ImageProcessingTestMixin, ...) but not the helper modules they import, so `load` downloads the sdist of exactly
the installed version with pip once, extracts its ``tests/`` folder into a cache and adds small stand-ins for what
is missing:

- ``exporters/test_export.py``: an empty ``ExportTesterMixin`` (the export tests are not in the sdist, so they do
  not run);
- ``generation/test_utils.py``: an empty ``GenerationTesterMixin`` (only generative models inherit it);
- ``utils/test_configuration_utils.py``: an empty ``config_common_kwargs`` (read only for configs without
  sub-configs; `WeCLIPConfig` has two);
- ``<cache>/utils/fetch_hub_objects_for_ci.py``: ``url_to_local_path`` returning the URL (only tests that compare
  two image-processor backends load Hub images, and they skip first with one backend).

The folder is imported as the package ``transformers_tests`` (``from transformers_tests.test_modeling_common
import ModelTesterMixin``), so it can never shadow or be shadowed by another ``tests`` package. Its location is
``$WECLIP_TRANSFORMERS_TESTS_CACHE`` (default ``~/.cache/weclip-hf``) ``/transformers-tests-<version>``; a second run
reuses it without network. The mixins also need ``parameterized``; when it is not installed it is pip-installed
into the same cache folder. When any of this cannot be obtained (no network, a development version of transformers
without an sdist), the caller's test module is skipped with the reason.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import subprocess
import sys
import tarfile
import tempfile
import warnings
from pathlib import Path
from types import SimpleNamespace

import pytest
import transformers

CACHE_ENV = "WECLIP_TRANSFORMERS_TESTS_CACHE"
PACKAGE = "transformers_tests"

_STAND_INS = {
    f"{PACKAGE}/exporters/__init__.py": "",
    f"{PACKAGE}/exporters/test_export.py": (
        '"""Stand-in (weclip-hf): the sdist has no tests/exporters, so the export tests do not run."""\n\n\n'
        "class ExportTesterMixin:\n    pass\n"
    ),
    f"{PACKAGE}/generation/__init__.py": "",
    f"{PACKAGE}/generation/test_utils.py": (
        '"""Stand-in (weclip-hf): the sdist has no tests/generation; only generative models inherit this."""\n\n\n'
        "class GenerationTesterMixin:\n    pass\n"
    ),
    f"{PACKAGE}/utils/__init__.py": "",
    f"{PACKAGE}/utils/test_configuration_utils.py": (
        '"""Stand-in (weclip-hf): read by ConfigTester only for configs without sub-configs."""\n\n'
        "config_common_kwargs = {}\n"
    ),
    "utils/fetch_hub_objects_for_ci.py": (
        '"""Stand-in (weclip-hf): tests run offline, Hub fixture images are not cached locally."""\n\n\n'
        "def url_to_local_path(url):\n    return url\n"
    ),
}


def cache_dir() -> Path:
    """Folder holding the extracted tests of the installed transformers version."""
    root = Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "weclip-hf").expanduser()
    return root / f"transformers-tests-{transformers.__version__}"


def _pip(*args: str, timeout: int = 600) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "pip", *args, "--quiet", "--disable-pip-version-check"],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"`pip {' '.join(args)}` failed: {(proc.stderr or proc.stdout).strip()[-1500:]}")


def _fetch(target: Path) -> None:
    """Download the transformers sdist, extract its tests/ as ``target/transformers_tests`` plus the stand-ins."""
    version = transformers.__version__
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        tmp = Path(tmp)
        downloads = tmp / "sdist"
        _pip(
            "download", "--no-deps", "--no-binary", ":all:", f"transformers=={version}", "-d", str(downloads)
        )
        (sdist,) = downloads.glob("transformers-*.tar.gz")
        staged = tmp / "staged"
        prefix = f"transformers-{version}/tests/"
        with tarfile.open(sdist) as tar:
            members = [m for m in tar.getmembers() if m.name.startswith(prefix) and (m.isfile() or m.isdir())]
            if not any(m.name == prefix + "test_modeling_common.py" for m in members):
                raise RuntimeError(f"{sdist.name} has no tests/test_modeling_common.py")
            for member in members:
                member.name = PACKAGE + "/" + member.name[len(prefix) :]
            safe = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}  # Python >= 3.10.12 / 3.11.4
            tar.extractall(staged, members=members, **safe)
        (staged / PACKAGE / "__init__.py").touch()
        for relative, text in _STAND_INS.items():
            path = staged / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            if not path.exists():
                path.write_text(text)
        if importlib.util.find_spec("parameterized") is None:
            _pip("install", "--no-deps", "--target", str(staged / "site-packages"), "parameterized")
        try:
            staged.rename(target)  # atomic: a parallel run either wins or finds the finished folder
        except OSError:
            if not target.exists():
                raise


def load() -> SimpleNamespace:
    """Import transformers' test mixins, fetching them first if needed; skips the calling module if impossible.

    Returns a namespace with the modules ``modeling`` (test_modeling_common), ``configuration``
    (test_configuration_common) and ``image_processing`` (test_image_processing_common).
    """
    target = cache_dir()
    if not (target / PACKAGE / "test_modeling_common.py").exists():
        try:
            _fetch(target)
        except (OSError, RuntimeError, ValueError, tarfile.TarError, subprocess.TimeoutExpired) as err:
            if os.environ.get("WECLIP_STRICT_TEST_DATA") == "1":  # CI: never green on a skipped suite
                raise RuntimeError(f"transformers' test mixins could not be fetched: {err}") from err
            pytest.skip(
                f"transformers {transformers.__version__}'s own test mixins could not be obtained from its sdist "
                f"(needs pip access to PyPI once; cached in {target}): {err}",
                allow_module_level=True,
            )
    for path in (target / "site-packages", target):
        if path.is_dir() and str(path) not in sys.path:
            sys.path.append(str(path))  # after the environment's own packages: nothing is shadowed
    if importlib.util.find_spec("parameterized") is None:
        pytest.skip(
            "transformers' test mixins need `parameterized` (pip install parameterized)",
            allow_module_level=True,
        )
    # their pytest marks (flash_attn_test, ...) are registered by transformers' own conftest, which is not used
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", pytest.PytestUnknownMarkWarning)
        return SimpleNamespace(
            modeling=importlib.import_module(f"{PACKAGE}.test_modeling_common"),
            configuration=importlib.import_module(f"{PACKAGE}.test_configuration_common"),
            image_processing=importlib.import_module(f"{PACKAGE}.test_image_processing_common"),
        )
