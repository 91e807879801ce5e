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

`load_pipeline_mixin` imports ``test_pipeline_mixin`` (PipelineTesterMixin) on local tiny models instead of the Hub's
(``TRANSFORMERS_TINY_MODEL_PATH``), with the installed transformers in place of the repository's ``src/transformers``
(absent from the sdist), a class lookup that also knows the caller's modules, and the caller's stand-ins for the
per-task test classes of ``tests/pipelines`` (absent from the sdist too).
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import subprocess
import sys
import tarfile
import tempfile
import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path
from types import ModuleType, SimpleNamespace
from unittest import mock

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


class ClassResolver:
    """``getattr(resolver, name)``: the class ``name`` from the first of ``modules`` that has it.

    Stands in for PipelineTesterMixin's ``transformers_module``, through which it resolves the tokenizer and
    processor class names of the tiny model summary (transformers' own classes only)."""

    def __init__(self, *modules: ModuleType):
        self._modules = modules

    def __getattr__(self, name: str):
        for module in self._modules:
            if hasattr(module, name):
                return getattr(module, name)
        searched = ", ".join(module.__name__ for module in self._modules)
        raise AttributeError(f"no class {name!r} in {searched}")


def load_pipeline_mixin(
    tiny_model_path: Path,
    tiny_model_summary: Mapping[str, dict],
    class_modules: Iterable[ModuleType],
    task_tests: Mapping[str, type],
) -> ModuleType:
    """Import transformers' ``test_pipeline_mixin`` to run on local tiny models; skips the calling module if impossible.

    Args:
        tiny_model_path: folder of the tiny models, ``<tiny_model_path>/<model_type>/<architecture name>`` (written
            by the caller before the tests run); ``reports/tiny_model_summary.json`` is written here from
            ``tiny_model_summary`` (architecture name -> ``{"tokenizer_classes": [...], "processor_classes": [...]}``).
        class_modules: modules searched, after transformers, for the summary's tokenizer and processor class names.
        task_tests: pipeline task -> the caller's stand-in for its test class in transformers' ``tests/pipelines``
            (with ``get_test_pipeline`` and ``run_pipeline_test``).

    Returns the imported module (``PipelineTesterMixin``, ...).
    """
    target = cache_dir()
    load()  # fetches the sdist's tests if needed and puts them on sys.path
    if not (target / PACKAGE / "test_pipeline_mixin.py").exists():
        message = (
            f"transformers {transformers.__version__}'s sdist has no tests/test_pipeline_mixin.py ({target})"
        )
        if os.environ.get("WECLIP_STRICT_TEST_DATA") == "1":
            raise RuntimeError(message)
        pytest.skip(message, allow_module_level=True)
    reports = Path(tiny_model_path) / "reports"
    reports.mkdir(parents=True, exist_ok=True)
    (reports / "tiny_model_summary.json").write_text(json.dumps(tiny_model_summary, indent=2))

    name = f"{PACKAGE}.test_pipeline_mixin"
    sys.modules.pop(name, None)  # it reads TRANSFORMERS_TINY_MODEL_PATH and the summary once, on import
    with (
        mock.patch.dict(os.environ, {"TRANSFORMERS_TINY_MODEL_PATH": str(tiny_model_path)}),
        # it imports <sdist>/src/transformers, absent from the sdist, only to look classes up by name
        mock.patch.object(
            transformers.utils, "direct_transformers_import", lambda *args, **kwargs: transformers
        ),
        warnings.catch_warnings(),
    ):
        warnings.simplefilter("ignore", pytest.PytestUnknownMarkWarning)  # is_pipeline_test marks
        module = importlib.import_module(name)
    module.transformers_module = ClassResolver(transformers, *class_modules)
    for task, test_class in task_tests.items():
        if task not in module.pipeline_test_mapping:
            raise KeyError(
                f"task_tests: unknown pipeline task {task!r}; expected one of {sorted(module.pipeline_test_mapping)}"
            )
        module.pipeline_test_mapping[task] = {"test": f"{test_class.__module__}.{test_class.__qualname__}"}
    return module
