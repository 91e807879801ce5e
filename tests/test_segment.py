"""examples/segment.py on toy-world images and awkward files (tiny CLIP, CPU, in process; one run under
`accelerate launch` with two processes), and the atomic writes it relies on."""

import io
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import (
    ROOT,
    example_module,
    free_port,
    interrupted_after,
    loading_on_a_gpu_machine,
    save_another_model_at,
    segment_part,
    train_env,
)
from PIL import Image

from weclip_hf.batch_jobs import decoding_workers, write_atomic
from weclip_hf.data.toy import generate_toy_images
from weclip_hf.visualization import PALETTE, display_size

SCRIPT = ROOT / "examples" / "segment.py"
EXIF_ORIENTATION = 0x0112


segment = example_module("segment")
# the script's concepts (examples/segmenting/) whose names the tests call or patch
image_files, naming, inputs = (segment_part(name) for name in ("image_files", "naming", "inputs"))


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    """A folder of 4 toy images (2 in a subfolder) and the awkward files: a truncated PNG, a 1x1 image, a grayscale
    image, a CMYK JPEG and a JPEG stored 64 x 40 whose EXIF orientation (6: turn 90 degrees) shows it 40 x 64."""
    root = tmp_path_factory.mktemp("images")
    (root / "sub").mkdir()
    toy, _, _ = generate_toy_images(6, seed=5)
    for i in range(4):
        Image.fromarray(toy[i]).save(root / ("sub" if i % 2 else "") / f"toy{i}.png")
    buffer = io.BytesIO()
    Image.fromarray(toy[4]).save(buffer, format="PNG")
    (root / "truncated.png").write_bytes(buffer.getvalue()[:200])
    Image.fromarray(toy[4][:1, :1]).save(root / "one_pixel.png")
    Image.fromarray(toy[5]).convert("L").save(root / "gray.png")
    Image.fromarray(toy[4]).convert("CMYK").save(root / "cmyk.jpg")
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = 6
    Image.fromarray(toy[5][:40, :64]).save(root / "rotated.jpg", exif=exif)
    (root / "notes.txt").write_text("not an image, and not named: ignored")
    return root


NAMES = ["cmyk", "gray", "one_pixel", "rotated", "sub/toy1", "sub/toy3", "toy0", "toy2", "truncated"]
READABLE = [n for n in NAMES if n != "truncated"]


@pytest.fixture(scope="module")
def run(images, toy_weclip_dir, tmp_path_factory) -> tuple[Path, dict]:
    """One run over the folder, batches of 4, overlays of the first 3 inputs: (output folder, report)."""
    out = tmp_path_factory.mktemp("segmented")
    report = segment.main(
        ["--model_name_or_path", str(toy_weclip_dir), "--images", str(images), "--output_dir", str(out)]
        + ["--batch_size", "4", "--num_overlays", "3"]
    )
    return out, report


def label_map(out: Path, name: str) -> np.ndarray:
    image = Image.open(out / "labels" / f"{name}.png")
    assert image.mode == "P" and np.array_equal(
        np.asarray(image.getpalette(), np.uint8).reshape(-1, 3), PALETTE
    )
    return np.asarray(image)


def test_label_maps_overlays_and_class_fractions(run, images):
    out, report = run
    assert (
        sorted(str(p.relative_to(out / "labels").with_suffix("")) for p in out.rglob("labels/**/*.png"))
        == READABLE
    )
    sizes = {name: label_map(out, name).shape for name in READABLE}
    assert sizes["one_pixel"] == (1, 1) and sizes["toy0"] == (96, 96)
    assert sizes["rotated"] == (64, 40)  # EXIF orientation applied: shown 40 wide, 64 high
    # the first 3 inputs (in sorted order) get an overlay: upscaled image and prediction panels, and a legend
    assert sorted(p.stem for p in (out / "overlays").glob("*.png")) == NAMES[:3]
    assert Image.open(out / "overlays" / "cmyk.png").width > 2 * 3 * 96
    # the report: per image the fraction of each class (ids of config.id2label), summing to 1; the skipped file
    assert report == json.loads((out / "class_fractions.json").read_text())
    assert report["num_images"] == len(READABLE) and set(report["images"]) == set(READABLE)
    id2label = json.loads((Path(report["model"]) / "config.json").read_text())["id2label"]
    labels = label_map(out, "toy0")
    expected = {id2label[str(i)]: np.mean(labels == i) for i in np.unique(labels)}
    assert report["images"]["toy0"] == pytest.approx(expected) and len(expected) > 1
    assert sum(report["classes"].values()) == pytest.approx(1.0)
    [skipped] = report["skipped"]
    # a file of --images is named by its path alone: it has no dataset column or row
    assert skipped["input"] == "truncated"
    assert skipped["reason"].startswith(f"file {str(images / 'truncated.png')!r}: OSError")


def test_awkward_images_are_read_as_the_pipeline_reads_them(run, images, toy_weclip_dir):
    """Grayscale, CMYK, EXIF-rotated and 1x1 inputs: the label maps of the "image-segmentation" pipeline."""
    from transformers import pipeline

    import weclip_hf  # noqa: F401  (registers the pipeline class)

    out, _ = run
    segmenter = pipeline("image-segmentation", model=str(toy_weclip_dir))
    label2id = segmenter.model.config.label2id
    for name, file in (
        ("gray", "gray.png"),
        ("cmyk", "cmyk.jpg"),
        ("rotated", "rotated.jpg"),
        ("one_pixel", "one_pixel.png"),
    ):
        ours = label_map(out, name)
        theirs = np.zeros_like(ours)
        for result in segmenter(str(images / file)):
            theirs[np.asarray(result["mask"]) > 0] = label2id[result["label"]]
        # batched with other images of its size, a near-tie pixel could flip (measured: none)
        assert np.mean(ours == theirs) > 0.999, name


def test_interrupted_run_resumes_without_losing_or_redoing_anything(
    run, images, toy_weclip_dir, tmp_path, monkeypatch
):
    """Killed after 3 label maps (mid-batch), then run again: the 3 are kept as they were, the others written,
    and all of them equal the uninterrupted run's."""
    reference, _ = run
    out = tmp_path / "out"
    argv = ["--model_name_or_path", str(toy_weclip_dir), "--images", str(images), "--output_dir", str(out)]
    argv += ["--batch_size", "2"]
    calls = []
    monkeypatch.setattr(segment, "save_image", interrupted_after(segment.save_image, 3, calls))
    with pytest.raises(KeyboardInterrupt):
        segment.main(argv)
    monkeypatch.undo()
    written = [Path(path) for _, path in calls]  # save_image(image, path)
    assert (
        sorted(out.rglob("labels/**/*.png")) == sorted(written)
        and not (out / "class_fractions.json").exists()
    )
    before = {p: p.stat().st_mtime_ns for p in written}
    report = segment.main(argv)
    assert all(p.stat().st_mtime_ns == t for p, t in before.items())  # not redone
    assert report["num_images"] == len(READABLE) and [s["input"] for s in report["skipped"]] == ["truncated"]
    for name in READABLE:
        assert np.mean(label_map(out, name) == label_map(reference, name)) > 0.999, name
    assert not [p for p in out.rglob("*") if ".tmp-" in p.name]


def test_other_settings_in_the_same_folder_are_refused(run, images, toy_weclip_dir):
    out, _ = run
    argv = ["--model_name_or_path", str(toy_weclip_dir), "--images", str(images), "--output_dir", str(out)]
    with pytest.raises(ValueError, match=r"other settings \(msf: False -> True"):
        segment.main([*argv, "--msf"])


@pytest.fixture
def finished_run(images, toy_weclip_dir, tmp_path) -> tuple[Path, list[str], Path]:
    """A finished run over the 2 images of ``images/sub`` with a copy of the toy WeCLIP folder (to save another
    model over): (model folder, command line, output folder)."""
    model, out = Path(shutil.copytree(toy_weclip_dir, tmp_path / "model")), tmp_path / "out"
    argv = ["--model_name_or_path", str(model), "--images", str(images / "sub"), "--output_dir", str(out)]
    assert segment.main(argv)["num_images"] == 2
    return model, argv, out


def test_overwrite_output_dir_starts_over_removing_only_what_the_earlier_run_wrote(
    images, toy_weclip_dir, tmp_path
):
    """A run over a, b, c (an overlay of a only), then one with --msf over a and b into the same folder: refused,
    naming --overwrite_output_dir, nothing touched; with it, the earlier run's label maps (c's too), overlay,
    records and report go, and the folder holds what a fresh --msf run writes. A user's own files stay: an overlay
    named after b (the earlier run wrote none for it), a PNG in labels/, a file beside them. A folder whose records
    do not list their files (an earlier version's) is refused."""
    inputs, out = tmp_path / "in", tmp_path / "out"
    inputs.mkdir()
    for name, source in (("a", "toy0.png"), ("b", "toy2.png"), ("c", "sub/toy1.png")):
        shutil.copyfile(images / source, inputs / f"{name}.png")
    model = ["--model_name_or_path", str(toy_weclip_dir)]
    segment.main([*model, "--images", str(inputs), "--output_dir", str(out), "--num_overlays", "1"])
    own = {
        out / "overlays" / "b.png": b"my overlay",
        out / "labels" / "mine.png": b"mine",
        out / "notes.txt": b"x",
    }
    for path, data in own.items():
        path.write_bytes(data)
    again = [*model, "--images", str(inputs / "a.png"), str(inputs / "b.png"), "--msf"]
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    with pytest.raises(
        ValueError, match=r"other settings \(msf: False -> True.*--overwrite_output_dir to start over"
    ):
        segment.main([*again, "--output_dir", str(out)])
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == before
    report = segment.main([*again, "--output_dir", str(out), "--overwrite_output_dir"])
    fresh = segment.main([*again, "--output_dir", str(tmp_path / "fresh")])
    assert report == fresh and set(report["images"]) == {"a", "b"}
    for name in ("a", "b"):
        assert (out / "labels" / f"{name}.png").read_bytes() == (
            tmp_path / "fresh" / "labels" / f"{name}.png"
        ).read_bytes()
    assert all(path.read_bytes() == data for path, data in own.items())
    assert {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()} == {
        "labels/a.png", "labels/b.png", "labels/mine.png", "overlays/b.png", "notes.txt", "class_fractions.json",
        ".state/settings.json", ".state/inputs/a.json", ".state/inputs/b.json", ".state/skipped-0.json",
    }  # fmt: skip
    record = json.loads((out / ".state" / "inputs" / "a.json").read_text())
    del record["outputs"]
    (out / ".state" / "inputs" / "a.json").write_text(json.dumps(record))
    with pytest.raises(ValueError, match=r"records do not list the files it wrote .*a.json"):
        segment.main([*model, "--images", str(inputs), "--output_dir", str(out), "--overwrite_output_dir"])
    assert (out / "labels" / "a.png").exists() and (out / "labels" / "b.png").exists()


def test_an_input_redone_takes_only_what_its_record_lists(images, toy_weclip_dir, tmp_path):
    """--output_dir = the images folder holding a user's own labels/a.png and overlays/a.png: the run refuses the
    label map (no record of its input); with --overwrite_output_dir it replaces it and keeps the overlay (no
    overlay written: it was deleted as the name's). A label map cut short is redone without overlays: the
    overlay the earlier attempt listed goes with it (it stayed, unlisted, through a later start-over)."""
    folder = tmp_path / "photos"
    (folder / "labels").mkdir(parents=True)
    (folder / "overlays").mkdir()
    shutil.copyfile(images / "toy0.png", folder / "a.png")
    (folder / "labels" / "a.png").write_bytes(b"mine")
    (folder / "overlays" / "a.png").write_bytes(b"my overlay")
    argv = ["--model_name_or_path", str(toy_weclip_dir), "--images", str(folder), "--output_dir", str(folder)]
    with pytest.raises(ValueError, match="'a' without a record of its input"):
        segment.main(argv)
    assert segment.main([*argv, "--overwrite_output_dir"])["num_images"] == 1
    assert (
        label_map(folder, "a").shape == (96, 96)
        and (folder / "overlays" / "a.png").read_bytes() == b"my overlay"
    )
    out = tmp_path / "out"
    argv = [
        "--model_name_or_path",
        str(toy_weclip_dir),
        "--images",
        str(folder / "a.png"),
        "--output_dir",
        str(out),
    ]
    segment.main([*argv, "--num_overlays", "-1"])
    label = (out / "labels" / "a.png").read_bytes()
    (out / "labels" / "a.png").write_bytes(label[:100])  # a power loss
    segment.main(argv)
    assert (out / "labels" / "a.png").read_bytes() == label and not (out / "overlays" / "a.png").exists()
    assert json.loads((out / ".state" / "inputs" / "a.json").read_text())["outputs"] == ["labels/a.png"]


def test_recorded_outputs_lie_in_the_writers_folders(tmp_path):
    """A record's ``outputs`` are read as files under the output folder's named folders; anything else (``..``,
    another folder, the folder itself, a string, null) is refused, naming the record, rather than deleted; no
    record, or one without them, lists nothing; a record file that holds no JSON object is named too (it was a
    bare JSONDecodeError)."""
    from weclip_hf.batch_jobs import read_record, recorded_outputs

    record, folders = tmp_path / "a.json", ("labels", "overlays")

    def listed(value):
        record.write_text(json.dumps({"input": {}, "outputs": value}))
        return recorded_outputs(record, tmp_path, folders)

    assert listed(["labels/a.png", "overlays/sub/a.png"]) == [
        tmp_path / "labels" / "a.png",
        tmp_path / "overlays" / "sub" / "a.png",
    ]
    assert recorded_outputs(tmp_path / "none.json", tmp_path, folders) is None
    record.write_text(json.dumps({"input": {}}))
    assert recorded_outputs(record, tmp_path, folders) is None
    for outside in (["labels/../../x.png"], ["images/a.png"], ["/etc/passwd"], ["labels"]):
        with pytest.raises(ValueError, match=f"{record} lists outputs outside"):
            listed(outside)
    for malformed in ("labels/a.png", None, [3]):
        with pytest.raises(ValueError, match=f"{record} lists its outputs as .*not as a list of paths"):
            listed(malformed)
    for damaged in ("", "null", "[1, 2]"):
        record.write_text(damaged)
        with pytest.raises(ValueError, match=f"{record} holds no record"):
            read_record(record)


def test_a_pathological_state_file_of_a_job_is_named_not_a_traceback_or_a_hang(tmp_path):
    """A job's record or settings file nesting 100,000 arrays ended in a RecursionError, a folder in its place in
    IsADirectoryError, a FIFO blocked the run forever, a key given twice was read as its last value; a list of
    skipped inputs naming one by a list ended in "unhashable type". Now the record "holds no record (...)", naming
    the file, and the list is left out of the report with a warning naming it."""
    from weclip_hf.batch_jobs import read_record, read_skipped

    record = tmp_path / "a.json"
    skipped = tmp_path / ".state" / "skipped-0.json"
    skipped.parent.mkdir()
    contents = {
        "nest too deep": "[" * 100_000 + "]" * 100_000,
        "the key 'a' is given twice": '{"a": 1, "a": 2}',
        "inputs named by other values than strings": '[{"input": ["a"], "reason": "?"}]',
    }
    for problem, content in contents.items():
        record.write_text(content)
        skipped.write_text(content)
        if not problem.startswith("inputs"):
            with pytest.raises(ValueError, match=f"^{record} holds no record \\(.*{problem}"):
                read_record(record)
        with pytest.warns(UserWarning, match=f"^{skipped}: not a list of skipped inputs .*{problem}"):
            assert read_skipped(tmp_path, 1, lambda name: False) == []
    for make, kind in ((Path.mkdir, "is a folder"), (os.mkfifo, "is a FIFO")):
        placed = tmp_path / f"{kind}.json"
        make(placed)
        with pytest.raises(ValueError, match=f"^{placed} holds no record \\(.*{kind}"):
            read_record(placed)


def test_another_model_saved_at_the_same_folder_is_refused(finished_run):
    """A retrained model saved at the same --model_name_or_path: the re-run is refused (it would report the old
    model's label maps as done), and nothing of the folder is rewritten."""
    model, argv, out = finished_run
    assert segment.main(argv)["num_images"] == 2  # the same model: the finished run is recognised
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    save_another_model_at(model)
    with pytest.raises(ValueError, match="model_name_or_path_weights_sha256: .* is not the one that wrote"):
        segment.main(argv)
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == before


def test_the_same_model_folder_given_by_another_path_continues(finished_run, monkeypatch):
    """The model folder of a finished run given as a relative path or with a trailing slash was refused as another
    setting ("model_name_or_path: '/abs/model' -> 'model'"), and its remedy, --overwrite_output_dir, deleted the
    work. Now a local folder is recorded and compared by its resolved path (its weights by their SHA-256), also
    where a run of an earlier version recorded it as given, and the recorded weights at another path (a project
    folder moved) are the recorded model."""
    model, argv, out = finished_run
    settings = out / ".state" / "settings.json"
    assert json.loads(settings.read_text())["model_name_or_path"] == str(model.resolve())
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    monkeypatch.chdir(model.parent)
    for given in ("model", f"{model}/", "./model/"):
        assert segment.main(["--model_name_or_path", given, *argv[2:]])["num_images"] == 2, given
    edit_json(settings, model_name_or_path="./model/")  # as an earlier version recorded it
    assert segment.main(argv)["num_images"] == 2
    moved = model.parent / "moved" / "model"  # the project folder moved: the same weights elsewhere
    shutil.copytree(model, moved)
    assert segment.main(["--model_name_or_path", str(moved), *argv[2:]])["num_images"] == 2
    assert {p: p.stat().st_mtime_ns for p in out.rglob("labels/*.png")} == {
        p: t for p, t in before.items() if p.parent.name == "labels"
    }


def test_a_hub_model_whose_revision_moved_to_other_weights_is_refused(
    images, toy_weclip_dir, tmp_path, monkeypatch
):
    """A Hub id whose main revision moved to other weights (on the Hub, or offline the Hub cache's refs/main): the
    re-run continued with them, mixing two models' label maps in one folder (only a local folder's weights were
    recorded). Now the weights of the snapshot transformers resolves are recorded as a local folder's: the re-run
    is refused, and nothing is rewritten. Served offline from a Hub cache holding two revisions of me/weclip."""
    import huggingface_hub

    repo, first, second = tmp_path / "hub" / "models--me--weclip", "a" * 40, "b" * 40
    for commit in (first, second):
        shutil.copytree(toy_weclip_dir, repo / "snapshots" / commit)
    save_another_model_at(repo / "snapshots" / second)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(first)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    out = tmp_path / "out"
    argv = ["--model_name_or_path", "me/weclip", "--images", str(images / "sub"), "--output_dir", str(out)]
    assert segment.main(argv)["num_images"] == 2
    assert segment.main(argv)["num_images"] == 2  # the same revision: continued
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    (repo / "refs" / "main").write_text(second)
    with pytest.raises(
        ValueError,
        match="model_name_or_path_weights_sha256: .* The model at me/weclip is not the one that wrote",
    ):
        segment.main(argv)
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == before
    # a folder of an earlier version, which recorded a Hub id's weights as None: which wrote it cannot be told
    edit_json(out / ".state" / "settings.json", model_name_or_path_weights_sha256=None)
    with pytest.raises(
        ValueError, match="did not record the weights of its model.*now at me/weclip cannot be"
    ):
        segment.main(argv)


def edit_json(path: Path, **changes) -> None:
    """Set ``changes`` in the JSON object saved at ``path``."""
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


def test_another_image_processor_or_config_in_the_model_folder_is_refused(finished_run):
    """Another preprocessor_config.json (another input size: other label maps) or config.json saved in the model
    folder: the re-run kept the old label maps as done (only the weights were recorded). Now it is refused, naming
    the setting, and nothing is rewritten; a folder of a version that recorded no processor is refused saying so."""
    model, argv, out = finished_run
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    edit_json(model / "preprocessor_config.json", size={"longest_edge": 48})
    with pytest.raises(ValueError, match=r"other settings \(image_processor: .*'longest_edge': 96.* -> .*48"):
        segment.main(argv)
    edit_json(model / "preprocessor_config.json", size={"longest_edge": 96})
    edit_json(model / "config.json", cam_bg_exponent=3)
    with pytest.raises(ValueError, match="model_name_or_path_weights_sha256: .* is not the one that wrote"):
        segment.main(argv)
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == before
    settings = out / ".state" / "settings.json"  # an earlier version's, which recorded no processor
    settings.write_text(
        json.dumps({k: v for k, v in json.loads(settings.read_text()).items() if k != "image_processor"})
    )
    with pytest.raises(ValueError, match=r"\(image_processor: not recorded by the version that wrote them"):
        segment.main(argv)


def test_a_folder_of_the_other_batch_script_is_refused_naming_its_writer(finished_run, tmp_path):
    """generate_pseudo_labels.py into segment.py's folder (and back): refused, naming the script that wrote it,
    also with --overwrite_output_dir, nothing touched (it said the folder's run "did not record the weights of its
    model", a fix for another cause). A folder whose settings record no writer (an earlier version's) continues."""
    generate = example_module("generate_pseudo_labels")
    model, argv, out = finished_run
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    labelling = ["--model", str(model), "--toy_train_images", "2"]
    for flags in ([], ["--overwrite_output_dir"]):
        with pytest.raises(
            ValueError,
            match=f"{out} holds the outputs of examples/segment.py, not of examples/generate_pseudo_labels.py",
        ):
            generate.main([*labelling, "--output_dir", str(out), *flags])
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == before
    generate.main([*labelling, "--output_dir", str(tmp_path / "labels")])
    with pytest.raises(ValueError, match="holds the outputs of examples/generate_pseudo_labels.py, not of "):
        segment.main([*argv[:-1], str(tmp_path / "labels"), "--overwrite_output_dir"])
    settings = out / ".state" / "settings.json"
    settings.write_text(
        json.dumps({k: v for k, v in json.loads(settings.read_text()).items() if k != "writer"})
    )
    assert segment.main(argv)["num_images"] == 2


def test_outputs_recorded_without_the_model_weights_are_refused(finished_run):
    """A folder written before the weights were recorded (settings.json without them): which model wrote it
    cannot be told, so a run with a local model folder is refused and says to choose another --output_dir, or to
    start over with --overwrite_output_dir (which did not help: such a folder could not be continued at all)."""
    _, argv, out = finished_run
    settings_file = out / ".state" / "settings.json"
    settings = json.loads(settings_file.read_text())
    weights = settings.pop("model_name_or_path_weights_sha256")
    settings_file.write_text(json.dumps(settings))
    with pytest.raises(ValueError, match="did not record the weights of its model.*another --output_dir for a run "
                       "with it. Or give --overwrite_output_dir to start over: it removes"):  # fmt: skip
        segment.main(argv)
    assert segment.main([*argv, "--overwrite_output_dir"])["num_images"] == 2
    assert json.loads(settings_file.read_text())["model_name_or_path_weights_sha256"] == weights


def test_a_damaged_settings_file_is_named_and_never_taken_for_other_settings(finished_run):
    """An emptied .state/settings.json gave a bare JSONDecodeError; with --overwrite_output_dir it must not be
    taken for a run with other settings (whose outputs a start-over removes)."""
    _, argv, out = finished_run
    (out / ".state" / "settings.json").write_text("")
    for flags in ([], ["--overwrite_output_dir"]):
        with pytest.raises(ValueError, match=r"settings.json holds no record .*another --output_dir"):
            segment.main([*argv, *flags])
    assert len(list((out / "labels").glob("*.png"))) == 2


def test_a_damaged_input_record_is_taken_as_none(finished_run):
    """An emptied input record (.state/inputs/toy1.json) stopped every run over the folder, also with
    --overwrite_output_dir, with "holds no record ... Choose another --output_dir". Now it is taken as no record:
    its label map is refused as one of an input that cannot be told, naming --overwrite_output_dir, which redoes
    it; the other input stays done."""
    _, argv, out = finished_run
    record, kept = out / ".state" / "inputs" / "toy1.json", out / "labels" / "toy3.png"
    whole, kept_at = record.read_bytes(), kept.stat().st_mtime_ns
    record.write_bytes(b"")
    with pytest.raises(
        ValueError,
        match=r"1 output of other inputs.*'toy1' without a record of its input \(.*or its record damaged\)"
        r".*--overwrite_output_dir to replace them",
    ):
        segment.main(argv)
    assert segment.main([*argv, "--overwrite_output_dir"])["num_images"] == 2
    assert record.read_bytes() == whole and kept.stat().st_mtime_ns == kept_at


def test_overlays_asked_for_in_a_rerun_of_a_finished_run_are_drawn_of_its_label_maps(finished_run):
    """A finished run without overlays, run again with --num_overlays 1: it drew none (its inputs were done). Now
    the first input's overlay is drawn, of the label map written, which stays as it was; its record lists it."""
    _, argv, out = finished_run
    labels = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in (out / "labels").rglob("*.png")}
    segment.main([*argv, "--num_overlays", "1"])
    assert [p.name for p in (out / "overlays").iterdir()] == ["toy1.png"]
    assert Image.open(out / "overlays" / "toy1.png").width > 2 * 3 * 96  # image, label map, legend and CAMs
    assert {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in labels} == labels
    record = json.loads((out / ".state" / "inputs" / "toy1.json").read_text())
    assert record["outputs"] == ["overlays/toy1.png", "labels/toy1.png"]
    drawn = (out / "overlays" / "toy1.png").stat().st_mtime_ns
    segment.main([*argv, "--num_overlays", "1"])  # done, overlay too
    assert (out / "overlays" / "toy1.png").stat().st_mtime_ns == drawn


def test_a_damaged_label_map_is_redone(finished_run):
    """A label map left empty or cut short (a power loss after its rename): a re-run takes it as not done and
    writes it again, where it crashed at the report (PIL's UnidentifiedImageError); the whole one is kept."""
    _, argv, out = finished_run
    whole = {p: p.read_bytes() for p in (out / "labels").glob("*.png")}
    damaged, kept = sorted(whole)
    kept_at = kept.stat().st_mtime_ns
    for size in (0, len(whole[damaged]) // 2):
        damaged.write_bytes(whole[damaged][:size])
        assert segment.main(argv)["num_images"] == 2
        assert damaged.read_bytes() == whole[damaged] and kept.stat().st_mtime_ns == kept_at


def test_label_maps_of_another_input_of_the_same_name_are_refused_or_replaced(
    run, images, toy_weclip_dir, tmp_path
):
    """Folders dX and dY with a different a.png (and the same b.png) segmented into one --output_dir: the second
    run is refused, naming both a.png files (it took dX's label map as dY's, "segments 0"), and rewrites nothing;
    with --overwrite_output_dir it replaces a's label map by dY's and keeps b's; a label map without a record of
    its input (an older version's) is refused too."""
    reference, _ = run
    for folder, a in (("dX", "toy0.png"), ("dY", "toy2.png")):
        (tmp_path / folder).mkdir()
        shutil.copyfile(images / a, tmp_path / folder / "a.png")
        shutil.copyfile(images / "sub" / "toy1.png", tmp_path / folder / "b.png")
    shutil.copyfile(images / "truncated.png", tmp_path / "dX" / "c.png")  # skipped in dX's run
    out = tmp_path / "out"
    argv = ["--model_name_or_path", str(toy_weclip_dir), "--output_dir", str(out), "--num_overlays", "-1"]
    segment.main([*argv, "--images", str(tmp_path / "dX")])
    state = out / ".state"
    (state / "skipped-0.json").rename(state / "skipped-1.json")  # as process 1 of two would have listed c
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    with pytest.raises(ValueError, match=r"1 output of other inputs.*'a' made from \S*dX/a.png, not from this "
                       r"run's \S*dY/a.png.*another --output_dir.*--overwrite_output_dir"):  # fmt: skip
        segment.main([*argv, "--images", str(tmp_path / "dY")])
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == before
    report = segment.main([*argv, "--images", str(tmp_path / "dY"), "--overwrite_output_dir"])
    assert set(report["images"]) == {"a", "b"} and report["skipped"] == []  # dX's c is not this run's
    assert np.mean(label_map(out, "a") == label_map(reference, "toy2")) > 0.999
    # the list of process 1 (of a run of two) is removed: this run tried its input again
    assert not (state / "skipped-1.json").exists()
    assert {p.name for p, t in before.items() if p.exists() and p.stat().st_mtime_ns != t} >= {
        "a.png",
        "a.json",
    }
    assert all(
        before[p] == p.stat().st_mtime_ns for p in (out / "labels" / "b.png", out / "overlays" / "b.png")
    )
    assert segment.main([*argv, "--images", str(tmp_path / "dY")])["images"] == report["images"]  # now done
    (state / "inputs" / "b.json").unlink()
    with pytest.raises(ValueError, match="'b' without a record of its input"):
        segment.main([*argv, "--images", str(tmp_path / "dY")])


def test_content_fingerprint_is_of_the_bytes_however_stored(tmp_path):
    """A file by path, as a ``{"bytes": None, "path"}`` dict and as stored bytes: one fingerprint; an array by its
    values, dtype and shape."""
    import hashlib

    from weclip_hf.batch_jobs import content_fingerprint

    (tmp_path / "a.png").write_bytes(b"image bytes")
    expected = {"size": 11, "sha256": hashlib.sha256(b"image bytes").hexdigest()}
    for value in (
        tmp_path / "a.png",
        str(tmp_path / "a.png"),
        {"bytes": None, "path": str(tmp_path / "a.png")},
    ):
        assert content_fingerprint(value) == expected
    assert content_fingerprint({"bytes": b"image bytes", "path": "elsewhere.png"}) == expected
    zeros = np.zeros((2, 3), np.uint8)
    assert content_fingerprint(zeros) == content_fingerprint(Image.fromarray(zeros))
    assert (
        len({str(content_fingerprint(a)) for a in (zeros, zeros.reshape(3, 2), zeros.astype(np.int16))}) == 3
    )
    assert content_fingerprint(None) is None


def test_run_settings_record_the_weights_of_a_local_model_folder(tmp_path, monkeypatch):
    """`check_run_settings` with ``models``: a local folder's safetensors files and config.json by their SHA-256, a
    Hub id absent from the Hub cache by its name only (also in a folder recorded without weights, as before)."""
    import hashlib

    import huggingface_hub

    from weclip_hf.batch_jobs import check_run_settings, weights_sha256

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty_cache"))

    model = tmp_path / "model"
    model.mkdir()
    (model / "model.safetensors").write_bytes(b"weights")
    (model / "config.json").write_text("{}")
    assert weights_sha256(str(model)) == {
        "model.safetensors": hashlib.sha256(b"weights").hexdigest(),
        "config.json": hashlib.sha256(b"{}").hexdigest(),
    }
    assert weights_sha256("openai/clip-vit-base-patch16") is None and weights_sha256(None) is None

    def check(out: Path, name_or_path: str):
        check_run_settings(out, {"model": name_or_path}, True, lambda: None, models=("model",))

    check(tmp_path / "local", str(model))
    check(tmp_path / "local", str(model))  # the same weights: accepted
    (model / "model.safetensors").write_bytes(b"retrained")
    with pytest.raises(ValueError, match=f"model_weights_sha256: .* The model at {model} is not the one"):
        check(tmp_path / "local", str(model))
    hub = tmp_path / "hub"
    (hub / ".state").mkdir(parents=True)
    (hub / ".state" / "settings.json").write_text(json.dumps({"model": "openai/clip-vit-base-patch16"}))
    check(hub, "openai/clip-vit-base-patch16")  # recorded before the weights were: a Hub id is accepted


def split_argv(model_dir, data) -> list[str]:
    """segment.py's flags for the ``test`` split of the dataset saved at ``data``."""
    return ["--model_name_or_path", str(model_dir), "--dataset_path", str(data), "--split", "test"]


def test_a_dataset_split_image_column_is_found_as_train_py_finds_it(toy_weclip_dir, tmp_path):
    """segment.py looked for a column named "image" only (a `pixel_values` dataset, sidewalk-semantic's layout, was
    refused); it finds the image column as train.py and evaluate.py do, or names the choices."""
    import datasets

    toy, _, _ = generate_toy_images(1, seed=9)
    split = datasets.Dataset.from_dict({"pixel_values": [Image.fromarray(toy[0])], "label": [[1]]})
    datasets.DatasetDict({"test": split}).save_to_disk(tmp_path / "data")
    argv = split_argv(toy_weclip_dir, tmp_path / "data")
    assert sorted(segment.main([*argv, "--output_dir", str(tmp_path / "out")])["images"]) == ["000000"]
    with pytest.raises(
        ValueError, match=r"--image_column 'photo' not found; columns: \['pixel_values', 'label'\]"
    ):
        segment.main([*argv, "--output_dir", str(tmp_path / "other"), "--image_column", "photo"])
    assert inputs.image_column(["photo", "img"], None) == "img"
    with pytest.raises(ValueError, match=r"No image column found .*Pass --image_column"):
        inputs.image_column(["photo"], None)


def test_dataset_split_bfloat16_msf_and_crf(toy_weclip_dir, tmp_path):
    """A saved dataset's split (rows named by number); bfloat16 weights; multi-scale + flip and the CRF."""
    import datasets

    toy, _, _ = generate_toy_images(2, seed=9)
    split = datasets.Dataset.from_dict(
        {"image": [Image.fromarray(t) for t in toy]}, features=datasets.Features({"image": datasets.Image()})
    )
    datasets.DatasetDict({"test": split}).save_to_disk(tmp_path / "data")
    argv = split_argv(toy_weclip_dir, tmp_path / "data")
    plain = segment.main([*argv, "--output_dir", str(tmp_path / "plain")])
    assert sorted(plain["images"]) == ["000000", "000001"]
    runs = {"bfloat16": ["--dtype", "bfloat16"], "msf_crf": ["--msf", "--scales", "1.0", "1.25", "--crf"]}
    for name, flags in runs.items():
        segment.main([*argv, "--output_dir", str(tmp_path / name), *flags])
    for row in plain["images"]:
        reference = label_map(tmp_path / "plain", row)
        assert reference.shape == (96, 96)
        assert (
            np.mean(label_map(tmp_path / "bfloat16", row) == reference) > 0.9
        )  # rounding moves a few pixels
        refined = label_map(tmp_path / "msf_crf", row)
        assert 0.5 < np.mean(refined == reference) < 1.0  # the flags change the maps, not beyond recognition
    with pytest.raises(ValueError, match="'validation' not found"):
        segment.main([*argv[:-2], "--output_dir", str(tmp_path / "other")])
    # a re-run is done; another dataset's rows under the same names are refused (recorded by their bytes)
    assert segment.main([*argv, "--output_dir", str(tmp_path / "plain")])["images"] == plain["images"]
    datasets.DatasetDict({"test": split.select([1, 0])}).save_to_disk(tmp_path / "swapped")
    swapped = [*argv[:3], str(tmp_path / "swapped"), *argv[4:], "--output_dir", str(tmp_path / "plain")]
    with pytest.raises(ValueError, match=r"2 outputs .*'000000' made from row 0 of split 'test' of \S*data, not "
                       r"from this run's row 0 of split 'test' of \S*swapped"):  # fmt: skip
        segment.main(swapped)


def test_help_says_the_default_dtype(capsys):
    """--help gives --dtype's default (float32 on every device), where it read as if bfloat16 were the GPU's."""
    with pytest.raises(SystemExit):
        segment.parse_args(["--help"])
    assert "(default: float32, on every device; on a GPU, bfloat16" in " ".join(
        capsys.readouterr().out.split()
    )
    assert (
        segment.parse_args(["--model_name_or_path", "m", "--images", "x", "--output_dir", "o"]).dtype
        == "float32"
    )


def test_scales_without_msf_and_a_crf_preset_without_crf_are_refused(capsys):
    """--scales without --msf and --crf_preset without --crf changed nothing, yet were recorded as settings (a
    later run with the defaults was refused): now refused, naming the switch; with it they are taken."""
    argv = ["--model_name_or_path", "m", "--images", "x", "--output_dir", "o"]
    for flags, switch in ((["--scales", "1", "0.5"], "--msf"), (["--crf_preset", "deeplab"], "--crf")):
        with pytest.raises(SystemExit):
            segment.parse_args([*argv, *flags])
        assert (
            f"{flags[0]} acts only with {switch}: add {switch}, or drop {flags[0]}" in capsys.readouterr().err
        )
    args = segment.parse_args([*argv, "--msf", "--scales", "1", "0.5", "--crf", "--crf_preset", "deeplab"])
    assert (args.scales, args.crf_preset) == ([1.0, 0.5], "deeplab")
    assert segment.parse_args(argv).crf_preset == "weclip"


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--images", "x", "--batch_size", "0"], "--batch_size must be >= 1, got 0"),
        ([], "give either --images or one of --dataset_name / --data_dir / --dataset_path"),
        (["--images", "x", "--data_dir", "d"], "give either --images or one of --dataset_name"),
    ],
)
def test_a_batch_size_below_one_and_inputs_of_neither_or_both_kinds_are_refused(flags, message, capsys):
    """--batch_size 0 would segment nothing; inputs are --images or a dataset, exactly one of them."""
    with pytest.raises(SystemExit):
        segment.parse_args(["--model_name_or_path", "m", "--output_dir", "o", *flags])
    assert message in capsys.readouterr().err


def test_crf_parameter_flags_reach_the_crf_and_are_recorded(toy_weclip_dir, tmp_path):
    """The --crf_<field> flags evaluate.py takes refine the label maps (segment.py took only --crf_preset): with
    --crf_num_iters 0 the CRF keeps the model's labels, with its default 10 iterations it moves some; a re-run with
    other parameters into the same folder is refused as a run of other settings."""
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    for i, image in enumerate(generate_toy_images(2, seed=9)[0]):
        Image.fromarray(image).save(inputs / f"toy{i}.png")
    model = ["--model_name_or_path", str(toy_weclip_dir), "--images", str(inputs)]
    runs = {"plain": [], "no_iterations": ["--crf", "--crf_num_iters", "0"], "crf": ["--crf"]}
    for name, flags in runs.items():
        segment.main([*model, "--output_dir", str(tmp_path / name), *flags])
    plain = [label_map(tmp_path / "plain", f"toy{i}") for i in range(2)]
    assert all(np.array_equal(label_map(tmp_path / "no_iterations", f"toy{i}"), plain[i]) for i in range(2))
    assert not all(np.array_equal(label_map(tmp_path / "crf", f"toy{i}"), plain[i]) for i in range(2))
    settings = json.loads((tmp_path / "no_iterations" / segment.STATE_DIR / "settings.json").read_text())
    assert settings["crf_overrides"] == {"num_iters": 0}
    with pytest.raises(ValueError, match="crf_overrides"):
        segment.main(
            [*model, "--output_dir", str(tmp_path / "no_iterations"), "--crf", "--crf_num_iters", "3"]
        )


def test_glob_patterns_and_output_names(images):
    files = image_files.find_image_files([f"{images}/**/toy*.png", str(images / "notes.txt")], images / "seg")
    assert [f.name for f in files] == ["notes.txt", "toy1.png", "toy3.png", "toy0.png", "toy2.png"]
    assert naming.output_names(files) == ["notes", "sub/toy1", "sub/toy3", "toy0", "toy2"]
    assert naming.output_names([images / "a.jpg", images / "a.png", images / "b.png"]) == [
        "a.jpg",
        "a.png",
        "b",
    ]
    with pytest.raises(FileNotFoundError, match="no image file"):
        image_files.find_image_files([f"{images}/*.tiff"], images / "seg")


def test_a_run_without_inputs_leaves_no_output_folder(images, toy_weclip_dir, tmp_path):
    """No image file there: refused before anything is written (it left --output_dir/.state behind)."""
    out = tmp_path / "out"
    argv = [
        "--model_name_or_path",
        str(toy_weclip_dir),
        "--images",
        f"{images}/*.tiff",
        "--output_dir",
        str(out),
    ]
    with pytest.raises(FileNotFoundError, match="no image file"):
        segment.main(argv)
    assert not out.exists()


def test_output_names_are_unique_where_a_stem_is_another_files_name(images, toy_weclip_dir, tmp_path):
    """a.png, a.jpg and a.png.png: a.png's name was a.png.png's ("a.png"), so one label map was overwritten by
    the other ("2 label maps ... skipped inputs: 0") and never made on a re-run; now each file gets its own."""
    paths = [tmp_path / "in" / name for name in ("a.jpg", "a.png", "a.png.png", "b.png", "b.jpg.png")]
    assert naming.output_names(paths) == ["a.jpg", "a.png", "a.png.png", "b", "b.jpg"]  # unique stems kept
    # names that differ in letter case only are one file on macOS and Windows: kept apart by the suffix there
    cased = [tmp_path / "in" / name for name in ("Photo.jpg", "photo.png", "sub/A.png", "SUB/b.png", "c.PNG")]
    assert naming.output_names(cased) == ["Photo.jpg", "photo.png", "sub/A", "SUB/b", "c"]
    # and paths that differ only in case (a case-sensitive file system's) are refused, naming them
    with pytest.raises(
        ValueError, match=r"differ in letter case or Unicode normalization only: \[\['A.jpg', 'a.jpg'\]\]"
    ):
        naming.output_names([tmp_path / "A.jpg", tmp_path / "a.jpg", tmp_path / "b.jpg"])
    # compared character by character: ß is not ss there (str.casefold would say it is)
    assert naming.output_names([tmp_path / "Straße.jpg", tmp_path / "STRASSE.png"]) == ["Straße", "STRASSE"]
    paths[0].parent.mkdir()
    for source, path in zip(("toy0.png", "toy2.png", "sub/toy1.png"), paths):
        shutil.copyfile(images / source, path)
    out = tmp_path / "out"
    argv = [
        "--model_name_or_path",
        str(toy_weclip_dir),
        "--images",
        str(paths[0].parent),
        "--output_dir",
        str(out),
    ]
    report = segment.main(argv)
    assert sorted(report["images"]) == ["a.jpg", "a.png", "a.png.png"] and report["skipped"] == []
    for name in report["images"]:
        assert json.loads((out / ".state" / "inputs" / f"{name}.json").read_text())["source"].endswith(
            f"/{name}"
        )
    before = {p: p.stat().st_mtime_ns for p in out.rglob("labels/*.png")}
    assert segment.main(argv)["images"] == report["images"]  # a re-run has nothing left to do
    assert {p: p.stat().st_mtime_ns for p in out.rglob("labels/*.png")} == before


def test_output_names_are_unique_where_names_differ_in_unicode_normalization_only(tmp_path):
    """café with é composed (NFC) or as e and an accent (NFD): two files on Linux, one on macOS (APFS, HFS+), where
    their outputs were one file (labels/café.png). Now they keep their suffixes, as names that differ in letter case
    do, and paths that differ in normalization (or case) only are refused."""
    composed, decomposed = "caf\u00e9", "cafe\u0301"
    paths = [tmp_path / f"{decomposed}.png", tmp_path / f"{composed.upper()}.jpg", tmp_path / "b.png"]
    assert naming.output_names(paths) == [f"{decomposed}.png", f"{composed.upper()}.jpg", "b"]
    same = [f"{decomposed}.jpg", f"{composed}.jpg"]
    with pytest.raises(
        ValueError, match=f"differ in letter case or Unicode normalization only: {re.escape(str([same]))}"
    ):
        naming.output_names([tmp_path / name for name in same])


def test_a_file_whose_outputs_would_be_another_inputs_folder_keeps_its_suffix(
    images, toy_weclip_dir, tmp_path
):
    """scan.jpg beside a folder scan.png/ (page1.png): the label map labels/scan.png was the folder of
    labels/scan.png/page1.png, and every run failed with FileExistsError; a.jpg beside a.json/ clashed so in
    .state/inputs. Now such a file keeps its suffix; where even that clashes, the inputs are refused."""
    folder = tmp_path / "in"
    for path in (
        folder / "scan.jpg",
        folder / "scan.png" / "page1.png",
        folder / "a.jpg",
        folder / "A.JSON" / "b.png",
    ):
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.open(images / "sub" / "toy1.png").save(path)
    names = ["A.JSON/b", "a.jpg", "scan.jpg", "scan.png/page1"]
    assert naming.output_names(sorted(p for p in folder.rglob("*") if p.is_file())) == names
    out = tmp_path / "out"
    argv = ["--model_name_or_path", str(toy_weclip_dir), "--images", str(folder), "--output_dir", str(out)]
    assert sorted(segment.main(argv)["images"]) == names and sorted(segment.main(argv)["images"]) == names
    with pytest.raises(ValueError, match=r"would be the folders of other inputs' outputs.*\['s.png'\]"):
        naming.output_names([folder / "s.png", folder / "s.jpg", folder / "s.png.png" / "p.png"])


def test_outputs_inside_the_images_folder_are_not_inputs_of_the_next_run(images, toy_weclip_dir, tmp_path):
    """--output_dir inside the --images folder: a re-run segmented the label maps and overlays of the first
    ("2 inputs", then "4 inputs": seg/labels/seg/labels/toy1, ...); now they are left out, and a re-run is done."""
    shutil.copytree(images / "sub", tmp_path / "photos")
    out = tmp_path / "photos" / "seg"
    argv = ["--model_name_or_path", str(toy_weclip_dir), "--images", str(tmp_path / "photos")]
    argv += ["--output_dir", str(out), "--num_overlays", "-1"]
    first = segment.main(argv)
    assert sorted(first["images"]) == ["toy1", "toy3"] and len(list(out.rglob("*.png"))) == 4
    assert segment.main(argv) == first
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png")) == [
        "labels/toy1.png",
        "labels/toy3.png",
        "overlays/toy1.png",
        "overlays/toy3.png",
    ]
    # an output named on the command line is left out too; so are the outputs of an --output_dir that is the
    # --images folder itself (the images there are still inputs)
    with pytest.raises(FileNotFoundError, match=r"no image file there \(the outputs in --output_dir"):
        image_files.find_image_files([str(out / "labels" / "toy1.png")], out)
    for folder in segment.OUTPUT_FOLDERS:
        shutil.copytree(out / "labels", tmp_path / "both" / folder)
    shutil.copyfile(images / "toy0.png", tmp_path / "both" / "toy0.png")
    assert image_files.find_image_files([str(tmp_path / "both")], tmp_path / "both") == [
        tmp_path / "both" / "toy0.png"
    ]


def test_photos_in_the_runs_own_output_dir_stay_inputs_of_its_re_runs(
    images, toy_weclip_dir, tmp_path, capsys
):
    """A photo in --output_dir, itself in the --images folder: the first run segmented it, a re-run left the folder
    out as 'the output folder of a run' (its own .state/settings.json) and dropped the photo from its report; under
    two processes, whether a process scanned before the main one wrote the settings decided which inputs it had
    (one input never done, another done twice under two names)."""
    photos = Path(shutil.copytree(images / "sub", tmp_path / "photos"))
    out = photos / "seg"
    out.mkdir()
    shutil.copyfile(images / "toy0.png", out / "extra.png")
    argv = ["--model_name_or_path", str(toy_weclip_dir), "--images", str(photos), "--output_dir", str(out)]
    first = segment.main(argv)
    assert sorted(first["images"]) == ["seg/extra", "toy1", "toy3"]
    capsys.readouterr()
    assert segment.main(argv) == first
    assert "left out" not in capsys.readouterr().out


def test_another_runs_output_folder_and_hidden_files_in_the_images_folder_are_not_inputs(
    images, toy_weclip_dir, tmp_path, capsys
):
    """A run into photos/seg-a, then one into another --output_dir over photos: it segmented seg-a's label maps
    and overlays as photos (only its own folder was left out), and hidden files that glob patterns skip. Now both
    are left out, the run folder named in a note."""
    photos = Path(shutil.copytree(images / "sub", tmp_path / "photos"))
    (photos / ".cache").mkdir()
    for hidden in (photos / ".cache" / "thumb.png", photos / ".toy1.png"):
        shutil.copyfile(photos / "toy1.png", hidden)
    model = ["--model_name_or_path", str(toy_weclip_dir), "--num_overlays", "1"]
    segment.main([*model, "--images", str(photos / "toy1.png"), "--output_dir", str(photos / "seg-a")])
    capsys.readouterr()
    report = segment.main([*model, "--images", str(photos), "--output_dir", str(tmp_path / "seg-b")])
    assert sorted(report["images"]) == ["toy1", "toy3"]
    assert f"Note: left out {photos / 'seg-a'}: the output folder of a run" in capsys.readouterr().out
    assert image_files.find_image_files([f"{photos}/*.png"], tmp_path / "seg-b") == [
        photos / "toy1.png",
        photos / "toy3.png",
    ]


def test_the_outputs_of_a_run_into_the_images_folder_itself_are_not_inputs_of_another_run(
    images, toy_weclip_dir, tmp_path, capsys
):
    """A run with --output_dir the --images folder (allowed), then one over that folder into another --output_dir,
    or with a glob pattern over it: the second segmented the first's label maps and overlays as photos
    (labels/toy1, overlays/toy1 beside toy1; a glob through a subfolder's run too). Now they are left out, the run
    folder named in a note; the photos beside them, and an output named as a file, stay inputs."""
    photos = Path(shutil.copytree(images / "sub", tmp_path / "photos"))
    model = ["--model_name_or_path", str(toy_weclip_dir), "--num_overlays", "1"]
    segment.main([*model, "--images", str(photos), "--output_dir", str(photos)])
    segment.main([*model, "--images", str(photos / "toy1.png"), "--output_dir", str(photos / "seg-a")])
    capsys.readouterr()
    report = segment.main([*model, "--images", str(photos), "--output_dir", str(tmp_path / "seg-b")])
    assert sorted(report["images"]) == ["toy1", "toy3"]
    assert (
        f"Note: left out the labels/ and overlays/ of {photos}: the outputs of a run"
        in capsys.readouterr().out
    )
    photos_only = [photos / "toy1.png", photos / "toy3.png"]
    assert image_files.find_image_files([f"{photos}/**/*.png"], tmp_path / "seg-b") == photos_only
    named = photos / "labels" / "toy1.png"
    assert image_files.find_image_files([str(named)], tmp_path / "seg-b") == [named]


def test_an_images_path_that_does_not_exist_is_named_as_such(images, tmp_path):
    """A mistyped --images path said 'no image file there (the outputs in --output_dir ... are left out)', as if
    the folder existed; now 'no such file or folder'. A pattern that matches nothing keeps its message."""
    with pytest.raises(FileNotFoundError, match=r"^--images '.*photoz': no such file or folder\.$"):
        image_files.find_image_files([str(tmp_path / "photoz")], tmp_path / "out")
    with pytest.raises(FileNotFoundError, match=r"no image file there"):
        image_files.find_image_files([f"{images}/*.tif"], tmp_path / "out")


def test_an_overlay_over_a_file_no_record_lists_is_refused(images, toy_weclip_dir, tmp_path):
    """--output_dir a folder whose overlays/ holds a file of an input's name that segment.py did not write (train.py's
    overlays/val_000.png in a model folder, a user's): the overlay was written over it without a word. Now refused
    before any image is written, naming it; --overwrite_output_dir replaces it."""
    shutil.copytree(images / "sub", tmp_path / "photos")
    out = tmp_path / "model"
    (out / "overlays").mkdir(parents=True)
    (out / "overlays" / "toy1.png").write_bytes(b"train.py's overlay")
    argv = ["--model_name_or_path", str(toy_weclip_dir), "--images", str(tmp_path / "photos")]
    argv += ["--output_dir", str(out), "--num_overlays", "-1"]
    with pytest.raises(
        ValueError, match=r"not written by this script.*\(overlays/toy1.png;.*--overwrite_output_dir"
    ):
        segment.main(argv)
    assert (out / "overlays" / "toy1.png").read_bytes() == b"train.py's overlay"
    assert not (out / "labels").exists()
    assert sorted(segment.main([*argv, "--overwrite_output_dir"])["images"]) == ["toy1", "toy3"]
    assert Image.open(out / "overlays" / "toy1.png").format == "PNG" and sorted(
        segment.main(argv)["images"]
    ) == ["toy1", "toy3"]


def test_linked_folders_are_followed_and_linked_files_named_as_they_are(images, tmp_path):
    """A linked subfolder was skipped without a word (rglob follows no folder link) and a linked file was named
    after its target (elsewhere/real_name.png: "real_name", its common folder moved). Now linked folders are
    followed, once each (a link to a folder above ends), files are named by their paths in the folder, and a file
    reached twice is one input, named by its path without links."""
    photos, elsewhere = tmp_path.resolve() / "photos", tmp_path.resolve() / "elsewhere"  # no link above them
    (elsewhere / "album").mkdir(parents=True)
    photos.mkdir()
    shutil.copyfile(images / "toy0.png", photos / "toy0.png")
    shutil.copyfile(images / "toy2.png", elsewhere / "real_name.png")
    shutil.copyfile(images / "sub" / "toy1.png", elsewhere / "album" / "x.png")
    links = {"alias.png": elsewhere / "real_name.png", "linked": elsewhere / "album", "loop": photos}
    (photos / "real").mkdir()
    shutil.copyfile(images / "sub" / "toy3.png", photos / "real" / "y.png")
    links.update({"same.png": photos / "toy0.png", "a_link": photos / "real"})
    for name, target in links.items():
        (photos / name).symlink_to(target)
    files = image_files.find_image_files([str(photos)], tmp_path / "out")
    assert files == [
        photos / "alias.png",
        photos / "linked" / "x.png",
        photos / "real" / "y.png",
        photos / "toy0.png",
    ]
    assert naming.output_names(files) == ["alias", "linked/x", "real/y", "toy0"]


def test_outputs_of_inputs_this_run_does_not_have_are_noted(images, toy_weclip_dir, tmp_path, capsys):
    """An input from another folder added to --images changes the inputs' common folder, so every output name: the
    re-run redid all and left the earlier names' label maps beside the new ones without a word (the report lists
    this run's only). They are named in a note; the folder is not touched otherwise."""
    out = tmp_path / "out"
    argv = ["--model_name_or_path", str(toy_weclip_dir), "--output_dir", str(out)]
    assert sorted(segment.main([*argv, "--images", str(images / "sub")])["images"]) == ["toy1", "toy3"]
    capsys.readouterr()
    report = segment.main([*argv, "--images", str(images / "sub"), str(images / "toy0.png")])
    assert sorted(report["images"]) == ["sub/toy1", "sub/toy3", "toy0"]
    assert (
        f"Note: {out} also holds the outputs of 2 inputs this run does not have (toy1, toy3): an earlier run's, of "
        "other inputs or named from another common folder; class_fractions.json lists this run's."
    ) in capsys.readouterr().out
    assert (out / "labels" / "toy1.png").is_file() and (out / "labels" / "sub" / "toy1.png").is_file()


def test_a_broken_link_is_listed_as_skipped(images, toy_weclip_dir, tmp_path):
    """A link to a missing file among the inputs was dropped without a word; it is an unreadable input."""
    (tmp_path / "in").mkdir()
    shutil.copyfile(images / "toy0.png", tmp_path / "in" / "a.png")
    (tmp_path / "in" / "gone.png").symlink_to(tmp_path / "missing.png")
    report = segment.main(
        ["--model_name_or_path", str(toy_weclip_dir), "--images", str(tmp_path / "in")]
        + ["--output_dir", str(tmp_path / "out")]
    )
    assert list(report["images"]) == ["a"]
    [skipped] = report["skipped"]
    assert skipped["input"] == "gone"
    assert skipped["reason"].startswith(f"file {str(tmp_path / 'in' / 'gone.png')!r}: FileNotFoundError")
    # the list of a process this run does not have (an earlier run's with more processes) gave its stale reason
    # for an input this run tried again (last file read won), and a damaged one (edited, cut short) stopped the
    # report with a bare JSONDecodeError: both are removed, the reasons this run found reported
    state = tmp_path / "out" / ".state"
    (state / "skipped-1.json").write_text('[{"input": "gone", "reason": "an earlier run\'s"}]')
    (state / "skipped-3.json").write_text('[{"input": "gone", "rea')
    again = segment.main(
        ["--model_name_or_path", str(toy_weclip_dir), "--images", str(tmp_path / "in")]
        + ["--output_dir", str(tmp_path / "out")]
    )
    assert again == report
    assert sorted(state.glob("skipped-*.json")) == [state / "skipped-0.json"]


def test_a_damaged_list_of_skipped_inputs_is_left_out_with_a_warning(
    images, toy_weclip_dir, tmp_path, monkeypatch
):
    """A list of this run's skipped inputs damaged before the report reads it (edited, cut short) stopped the
    report with a bare JSONDecodeError: it is left out with a warning naming it."""
    (tmp_path / "in").mkdir()
    shutil.copyfile(images / "toy0.png", tmp_path / "in" / "a.png")
    (tmp_path / "in" / "gone.png").symlink_to(tmp_path / "missing.png")

    def write_damaged(output_dir, rank, skipped):
        path = Path(output_dir) / ".state" / f"skipped-{rank}.json"
        path.write_text('[{"input": "gone", "rea')
        return path

    monkeypatch.setattr(segment, "write_skipped", write_damaged)
    damaged = tmp_path / "out" / ".state" / "skipped-0.json"
    with pytest.warns(UserWarning, match=rf"{re.escape(str(damaged))}: not a list of skipped inputs"):
        report = segment.main(
            ["--model_name_or_path", str(toy_weclip_dir), "--images", str(tmp_path / "in")]
            + ["--output_dir", str(tmp_path / "out")]
        )
    assert list(report["images"]) == ["a"] and report["skipped"] == []


def test_a_done_input_that_became_a_broken_link_is_listed_as_skipped(images, toy_weclip_dir, tmp_path):
    """An input done by an earlier run whose link now points to a missing file: the re-run stopped with a bare
    FileNotFoundError (its content fingerprinted to compare with its record). Now the re-run is refused, naming it,
    its outputs kept (a drive not mounted, say); with --overwrite_output_dir it is skipped and listed by its path, as
    on a first run: the report is a fresh run's, the label map and overlay of the earlier input gone (they are not
    this run's result), the other input left done."""
    (tmp_path / "in").mkdir()
    shutil.copyfile(images / "toy0.png", tmp_path / "in" / "a.png")
    (tmp_path / "in" / "link.png").symlink_to(images / "toy2.png")
    argv = [
        "--model_name_or_path",
        str(toy_weclip_dir),
        "--images",
        str(tmp_path / "in"),
        "--num_overlays",
        "-1",
    ]
    out = tmp_path / "out"
    assert sorted(segment.main([*argv, "--output_dir", str(out)])["images"]) == ["a", "link"]
    kept = (out / "labels" / "a.png").stat().st_mtime_ns
    (tmp_path / "in" / "link.png").unlink()
    (tmp_path / "in" / "link.png").symlink_to(tmp_path / "missing.png")
    with pytest.raises(ValueError) as refused:
        segment.main([*argv, "--output_dir", str(out)])
    assert str(refused.value) == (
        f"{out} holds the outputs of 1 input that an earlier run did and this run cannot read ('link': a broken "
        "link, a file not readable). Fix them and re-run, or give --overwrite_output_dir to drop their outputs "
        "(they are then listed as skipped)."
    )
    assert (out / "labels" / "link.png").is_file() and (out / "overlays" / "link.png").is_file()
    report = segment.main([*argv, "--output_dir", str(out), "--overwrite_output_dir"])
    assert report == segment.main([*argv, "--output_dir", str(tmp_path / "fresh")])
    assert list(report["images"]) == ["a"]
    [skipped] = report["skipped"]
    assert skipped["input"] == "link"
    assert skipped["reason"].startswith(f"file {str(tmp_path / 'in' / 'link.png')!r}: FileNotFoundError")
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png")) == [
        "labels/a.png",
        "overlays/a.png",
    ]
    assert (out / "labels" / "a.png").stat().st_mtime_ns == kept


def test_links_among_the_outputs_are_refused_and_never_followed(images, toy_weclip_dir, tmp_path):
    """Links planted in --output_dir (labels/, overlays/, class_fractions.json, a folder inside .state/): the run
    wrote and replaced files in the folders they point to, also with --overwrite_output_dir; now it is refused,
    naming each link, before anything is written, and the removal helpers never delete through a link."""
    from weclip_hf.batch_jobs import remove_file, remove_temporary_files

    decoys = [tmp_path / f"decoy{i}" for i in range(3)]
    for decoy in decoys:
        decoy.mkdir()
        (decoy / "toy0.png").write_bytes(b"keep")
        (decoy / ".toy0.png.tmp-1").write_bytes(b"keep")
    out = tmp_path / "seg1"
    (out / ".state").mkdir(parents=True)
    for name, target in (("labels", decoys[0]), ("overlays", decoys[1]), (".state/inputs", decoys[2])):
        (out / name).symlink_to(target)
    (out / "class_fractions.json").symlink_to(decoys[0] / "toy0.png")
    before = {p: p.read_bytes() for p in tmp_path.rglob("decoy*/*")}
    argv = ["--model_name_or_path", str(toy_weclip_dir), "--images", str(images / "toy0.png")]
    argv += ["--output_dir", str(out), "--num_overlays", "1", "--overwrite_output_dir"]
    with pytest.raises(
        ValueError, match=r"holds links where this script writes.*Remove the links"
    ) as refused:
        segment.main(argv)
    for name in ("labels", "overlays", ".state/inputs", "class_fractions.json"):
        assert f"{out / name} -> " in str(refused.value), name
    remove_temporary_files([out])
    with pytest.raises(ValueError, match=r"seg1/labels is a link .* would delete a file of another folder"):
        remove_file(out / "labels" / "toy0.png", out)
    remove_file(out / "class_fractions.json", out)  # the link itself, not its target
    assert {p: p.read_bytes() for p in tmp_path.rglob("decoy*/*")} == before
    assert not (out / "class_fractions.json").is_symlink()


def test_palette_and_display_size():
    assert len({tuple(c) for c in PALETTE[:21]}) == 21  # VOC's 21 labels: distinct colours
    assert tuple(PALETTE[15]) == (192, 128, 128) and tuple(PALETTE[255]) == (
        224,
        224,
        192,
    )  # VOC person, void
    assert display_size(96, 96) == (288, 288) and display_size(375, 500) == (375, 500)
    assert display_size(3000, 4000) == (576, 768) and display_size(1, 1) == (256, 256)


def test_label_maps_of_more_than_255_classes_and_an_ignore_index_of_minus_100():
    """Overlays, label map PNGs and class fractions refused ids outside 0..255 ("labels must hold ids 0..255 for a
    palette PNG"): a model of 300 classes (ignore index -100) failed at its final evaluation's overlays."""
    from weclip_hf.visualization import (
        VOID_COLOUR,
        class_fractions,
        label_colours,
        label_map_image,
        overlay_figure,
    )

    labels = np.array([[0, 15, 255], [256, 299, -100]], np.int32)
    colours = label_colours(labels, ignore_index=-100)
    assert (colours[0] == PALETTE[[0, 15, 255]]).all() and (colours[1, 2] == VOID_COLOUR).all()
    assert (
        len({tuple(c) for c in colours[1, :2]} | {tuple(c) for c in colours[0]}) == 5
    )  # 256, 299: their own
    id2label = {i: f"c{i}" for i in range(300)}
    assert class_fractions(labels, id2label, ignore_index=-100) == {
        name: 1 / 6 for name in ("ignore", "c0", "c15", "c255", "c256", "c299")
    }
    png = io.BytesIO()
    label_map_image(labels[:, :2], num_labels=300).save(
        png, format="PNG"
    )  # 16 bits, for every image of the model
    assert np.asarray(Image.open(png)).tolist() == [[0, 15], [256, 299]]
    assert label_map_image(np.zeros((2, 2), np.int64), num_labels=300).mode == "I;16"
    assert label_map_image(np.zeros((2, 2), np.int64), num_labels=21).mode == "P"
    image = np.zeros((2, 3, 3), np.uint8)
    figure = overlay_figure(image, {"ground truth": labels}, id2label, ignore_index=-100)
    assert figure.width > 2 * display_size(2, 3)[1]  # image, label map, legend


def test_atomic_write_leaves_the_old_file_or_nothing(tmp_path):
    def fail_halfway(tmp: Path):
        tmp.write_bytes(b"half")
        raise OSError("disk full")

    path = tmp_path / "a.png"
    with pytest.raises(OSError):
        write_atomic(path, fail_halfway)
    assert not path.exists() and list(tmp_path.iterdir()) == []
    path.write_bytes(b"old")
    with pytest.raises(OSError):
        write_atomic(path, fail_halfway)
    assert path.read_bytes() == b"old" and list(tmp_path.iterdir()) == [path]


def test_atomic_write_of_the_longest_file_name_and_removal_of_its_temporary_files(tmp_path):
    """A valid 249-character name failed (its temporary file's name, ``.{name}.tmp-{pid}``, was too long for the
    file system); the temporary files an interrupted write leaves, of this version and an earlier one, are
    removed."""
    from weclip_hf.batch_jobs import remove_temporary_files, save_image

    path = save_image(Image.new("RGB", (2, 2)), tmp_path / f"{'a' * 245}.png")
    assert Image.open(path).size == (2, 2) and list(tmp_path.iterdir()) == [path]
    left = [tmp_path / ".tmp-123-0a1b2c3d", tmp_path / ".a.png.tmp-123"]
    for temporary in left:
        temporary.write_bytes(b"half")
    remove_temporary_files([tmp_path])
    assert list(tmp_path.iterdir()) == [path]


def test_overlays_are_saved_at_the_fastest_png_level_with_the_same_pixels(tmp_path):
    """`save_overlay`: a preview, PNG-compressed at level 1 (its zlib header's FLEVEL 0, "fastest"; PIL's default
    level 6 gives FLEVEL 2), the pixels as given."""
    from weclip_hf.batch_jobs import save_image, save_overlay

    pixels = np.random.default_rng(0).integers(0, 256, (40, 60, 3), dtype=np.uint8)
    pixels[:20] = 7  # something to compress
    levels = {}
    for save in (save_overlay, save_image):
        path = save(Image.fromarray(pixels), tmp_path / f"{save.__name__}.png")
        assert np.array_equal(np.asarray(Image.open(path)), pixels)
        data = path.read_bytes()
        levels[save.__name__] = data[data.index(b"IDAT") + 5] >> 6  # the zlib stream's FLG byte
    assert levels == {"save_overlay": 0, "save_image": 2}


def test_atomic_write_flushes_the_whole_file_to_disk_before_the_rename(tmp_path, monkeypatch):
    """The file is fsynced, with all its bytes, before it takes its name: a power loss after the rename leaves the
    whole file, not an empty one that counts as done."""
    path, events, fsync = tmp_path / "a.json", [], os.fsync

    def recorded_fsync(fd):
        events.append({"size": os.fstat(fd).st_size, "renamed": path.exists()})
        fsync(fd)

    monkeypatch.setattr(os, "fsync", recorded_fsync)
    write_atomic(path, lambda tmp: tmp.write_text("0123456789"))
    assert events == [{"size": 10, "renamed": False}] and path.read_text() == "0123456789"


def test_two_processes_split_the_inputs(run, images, toy_weclip_dir, tmp_path):
    """`accelerate launch` with two CPU processes: each segments every other input, the main one reports them all;
    they start over in a folder that holds a run with other settings (--overwrite_output_dir: the main process
    removes it while the other waits)."""
    reference, _ = run
    out = tmp_path / "out"
    earlier = ["--model_name_or_path", str(toy_weclip_dir), "--images", str(images / "sub"), "--msf"]
    segment.main([*earlier, "--output_dir", str(out), "--num_overlays", "-1"])  # labels/toy1.png, overlays/
    launcher = [os.path.join(os.path.dirname(sys.executable), "accelerate"), "launch", "--multi_gpu"]
    launcher += [
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "--main_process_port",
        str(free_port()),
    ]
    command = [*launcher, str(SCRIPT), "--model_name_or_path", str(toy_weclip_dir), "--images", str(images)]
    env = {**train_env(threads=1), "ACCELERATE_USE_CPU": "1"}
    proc = subprocess.run(
        [*command, "--output_dir", str(out), "--batch_size", "4", "--overwrite_output_dir"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert sorted((out / ".state").glob("skipped-*.json")) == [
        out / ".state" / f"skipped-{r}.json" for r in (0, 1)
    ]
    report = json.loads((out / "class_fractions.json").read_text())
    assert set(report["images"]) == set(READABLE) and [s["input"] for s in report["skipped"]] == ["truncated"]
    for name in READABLE:
        assert np.mean(label_map(out, name) == label_map(reference, name)) > 0.999, name
    assert not (out / "labels" / "toy1.png").exists() and not list((out / "overlays").iterdir())
    assert json.loads((out / ".state" / "settings.json").read_text())["msf"] is False


def test_decoding_workers_default_to_two_on_an_accelerator_and_none_on_the_cpu():
    assert decoding_workers(None, "cuda") == 2 and decoding_workers(None, "cpu") == 0
    assert decoding_workers(3, "cpu") == 3 and decoding_workers(0, "cuda") == 0  # --num_workers wins


def test_process_shares_cover_every_input_once_and_refuse_a_rank_outside_the_run():
    """`process_share`: ranks 0..world_size - 1 take every input once between them; a rank of world_size or more
    (a process counted from 1) is refused, as its share would leave rank 0's inputs undone."""
    from weclip_hf.batch_jobs import process_share

    shares = [list(process_share(7, rank, 3)) for rank in range(3)]
    assert sorted(sum(shares, [])) == list(range(7)) and shares[1] == [1, 4]
    for rank in (3, -1):
        with pytest.raises(ValueError, match=rf"rank must be in 0\.\.world_size - 1 = 2, got {rank}"):
            process_share(7, rank, 3)


def test_inputs_are_grouped_by_their_whole_shape_in_order_of_appearance():
    """`group_by_size`: one group per shape (one forward each: a group is stacked), not per width alone."""
    import torch

    from weclip_hf.batch_jobs import group_by_size

    items = [
        {"pixel_values": torch.zeros(3, h, w), "n": n}
        for n, (h, w) in enumerate([(4, 6), (5, 6), (4, 6), (4, 8)])
    ]
    assert [[item["n"] for item in group] for group in group_by_size(items)] == [[0, 2], [1], [3]]


def test_recorded_inputs_split_into_done_and_to_redo_with_the_unreadable_among_those_to_redo(tmp_path):
    """`check_recorded_inputs` with --overwrite_output_dir: an output of the same input is done; one of another
    input, without a record, or whose input cannot be read now is among the others, whose records the caller drops
    (an unreadable input's output left in place would stay in the folder as its result)."""
    from weclip_hf.batch_jobs import check_recorded_inputs

    def record(content):
        return {"source": f"{content}.png", "input": {"size": 1, "sha256": content}}

    recorded = {"same": record("a"), "other": record("b"), "none": None, "gone": record("c")}
    now = {"same": record("a"), "other": record("x"), "none": record("y"), "gone": None}
    done, redo = check_recorded_inputs(tmp_path, recorded, now.get, overwrite=True)
    assert (done, redo) == ({"same"}, {"other", "none", "gone"})


def test_skipped_inputs_leave_out_those_a_later_run_did(tmp_path):
    """`read_skipped`: this run's processes' lists, once each and sorted, without the inputs now done (an input
    fixed and processed by a later run); another process count's stale list is removed."""
    from weclip_hf.batch_jobs import STATE_DIR, read_skipped, write_skipped

    write_skipped(
        tmp_path, 0, [{"input": "b.png", "reason": "cut short"}, {"input": "e.png", "reason": "empty"}]
    )
    write_skipped(tmp_path, 1, [{"input": "c.png", "reason": "a broken link"}])
    write_skipped(tmp_path, 2, [{"input": "d.png", "reason": "of an earlier run of 3 processes"}])
    skipped = read_skipped(tmp_path, 2, done=lambda name: name == "b.png")
    assert [entry["input"] for entry in skipped] == ["c.png", "e.png"]  # sorted, not by process
    assert not (tmp_path / STATE_DIR / "skipped-2.json").exists()


def test_a_label_map_cut_short_is_not_whole(tmp_path):
    """`is_whole_image` reads the file to its end (PIL's verify): a PNG cut short after its header (a power loss
    after the rename) is not whole, so a re-run redoes it."""
    from PIL import Image

    from weclip_hf.batch_jobs import is_whole_image, save_image

    path = save_image(Image.fromarray(np.arange(64 * 64, dtype=np.uint8).reshape(64, 64)), tmp_path / "a.png")
    assert is_whole_image(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    assert not is_whole_image(path)
    # one byte of the pixel data flipped: the chunk's checksum fails (PIL raises SyntaxError, not OSError)
    damaged = bytearray(data)
    damaged[data.index(b"IDAT") + 10] ^= 0xFF
    path.write_bytes(bytes(damaged))
    assert not is_whole_image(path)


def test_a_fifo_at_an_output_is_not_whole_and_not_waited_on(tmp_path):
    """A FIFO at an output's name (labels/a.png) blocked a re-run's `is_whole_image` forever (here a writer opens it
    after 2 s, so that the old code ends, taking the empty read for no image); it is not whole, at once, so the
    output is redone (its atomic rename replaces the FIFO)."""
    import time

    from conftest import release_fifo_later

    from weclip_hf.batch_jobs import is_whole_image

    os.mkfifo(tmp_path / "a.png")
    release_fifo_later(tmp_path / "a.png")
    start = time.perf_counter()
    assert not is_whole_image(tmp_path / "a.png")
    assert time.perf_counter() - start < 1


def test_the_fingerprint_of_a_fifo_input_is_refused_not_waited_on(tmp_path):
    """A FIFO among a job's inputs blocked its content fingerprint (the SHA-256 of its bytes) forever (here a writer
    opens it after 2 s, so that the old code ends); it is refused at once with an OSError, which the job's input
    record takes for an input that cannot be read."""
    from conftest import release_fifo_later

    from weclip_hf.batch_jobs import content_fingerprint

    os.mkfifo(tmp_path / "a.png")
    release_fifo_later(tmp_path / "a.png")
    with pytest.raises(OSError, match="it is a FIFO, socket or device, not a file"):
        content_fingerprint(str(tmp_path / "a.png"))


def test_removing_a_file_under_an_output_dir_that_is_a_link(tmp_path):
    """`remove_file` refuses a link between ``root`` and the file, but ``root`` itself may be a link (an
    --output_dir on a larger disk, as `check_no_links` allows)."""
    from weclip_hf.batch_jobs import remove_file

    (tmp_path / "disk" / "labels").mkdir(parents=True)
    (tmp_path / "disk" / "labels" / "a.png").write_bytes(b"png")
    (tmp_path / "out").symlink_to(tmp_path / "disk")
    remove_file(tmp_path / "out" / "labels" / "a.png", tmp_path / "out")
    assert not (tmp_path / "disk" / "labels" / "a.png").exists()


def test_temporary_files_are_removed_and_a_folder_of_a_temporary_name_is_left(tmp_path):
    """`remove_temporary_files` deletes the files interrupted atomic writes left, never a folder of such a name."""
    from weclip_hf.batch_jobs import remove_temporary_files
    from weclip_hf.batch_jobs.atomic_writes import TEMPORARY_PREFIX

    (tmp_path / "labels").mkdir()
    (tmp_path / "labels" / f"{TEMPORARY_PREFIX}12-abcd").write_bytes(b"half")
    (tmp_path / f"{TEMPORARY_PREFIX}kept").mkdir()
    remove_temporary_files([tmp_path])
    assert sorted(p.name for p in tmp_path.rglob("*")) == [f"{TEMPORARY_PREFIX}kept", "labels"]


def test_some_of_counts_only_the_entries_left_out():
    from weclip_hf.wording import some_of

    assert some_of(list("abcde")) == "a, b, c, d, e"
    assert some_of(list("abcdef")) == "a, b, c, d, e, and 1 more"


def test_a_run_where_no_input_could_be_read_exits_with_an_error(run, toy_weclip_dir, tmp_path):
    """segment.py exited 0 when every input was unreadable ("0 label maps ... 1 inputs skipped")."""
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    report = segment.main(
        [
            "--model_name_or_path",
            str(toy_weclip_dir),
            "--images",
            str(broken),
            "--output_dir",
            str(tmp_path / "o"),
        ]
    )
    assert report["num_images"] == 0 and len(report["skipped"]) == 1
    assert segment.exit_status(report) == 1
    assert (
        segment.exit_status(run[1]) == 0 and segment.exit_status(None) == 0
    )  # another process: the main's says
    # no input skipped (an empty split): nothing failed
    assert segment.exit_status({"num_images": 0, "skipped": []}) == 0


def test_device_cpu_runs_the_model_on_the_cpu_of_a_gpu_machine(images, toy_weclip_dir, tmp_path, monkeypatch):
    """segment.py had no --device: on a GPU machine the CPU took ACCELERATE_USE_CPU=1. --device cpu loads the model
    onto the CPU where accelerate's device is a GPU, and segments as the default run does."""
    import torch

    devices = loading_on_a_gpu_machine(segment, monkeypatch)
    argv = ["--model_name_or_path", str(toy_weclip_dir), "--images", str(images / "sub")]
    report = segment.main([*argv, "--output_dir", str(tmp_path / "out"), "--device", "cpu"])
    assert devices == [torch.device("cpu")] and sorted(report["images"]) == ["toy1", "toy3"]


def test_counts_of_one_are_said_in_the_singular(images, toy_weclip_dir, tmp_path, capsys):
    """A run of one image printed "1 inputs; this process segments 1 and draws 1 overlays" and "1 label maps"."""
    argv = ["--model_name_or_path", str(toy_weclip_dir), "--images", str(images / "toy0.png")]
    segment.main([*argv, "--output_dir", str(tmp_path / "out"), "--num_overlays", "1"])
    printed = capsys.readouterr().out
    assert "1 input; this process segments 1 and draws 0 overlays of done ones" in printed
    assert f"1 label map in {tmp_path / 'out' / 'labels'}; skipped inputs: 0" in printed


def test_the_overall_class_fractions_are_of_the_pixels_of_all_label_maps(run):
    """class_fractions.json's "classes": the fraction of each class over the pixels of every label map together."""
    out, report = run
    id2label = json.loads((Path(report["model"]) / "config.json").read_text())["id2label"]
    labels = np.concatenate([label_map(out, name).ravel() for name in READABLE])
    expected = {id2label[str(i)]: np.mean(labels == i) for i in np.unique(labels)}
    assert len(expected) > 1 and report["classes"] == pytest.approx(expected)


def test_a_re_run_of_a_finished_run_rewrites_nothing(finished_run):
    """Re-run with the overlay of its first input asked for: the other input (no overlay asked) is neither read nor
    its record written again."""
    _, argv, out = finished_run
    segment.main([*argv, "--num_overlays", "1"])
    records = {p: p.stat().st_mtime_ns for p in (out / ".state" / "inputs").rglob("*.json")}
    segment.main([*argv, "--num_overlays", "1"])
    assert {p: p.stat().st_mtime_ns for p in records} == records and len(records) == 2


def test_another_dtype_in_the_same_folder_is_refused(finished_run):
    """--dtype changes the label maps (bfloat16 moves pixels): a re-run with another one is another run's settings."""
    _, argv, _ = finished_run
    with pytest.raises(ValueError, match=r"other settings \(dtype: 'float32' -> 'bfloat16'"):
        segment.main([*argv, "--dtype", "bfloat16"])


def test_msf_segments_with_the_multi_scale_and_flip_logits(varied_tiny_model):
    """--msf: the label map is the argmax of the multi-scale + flip logits (upsampled to the image), not of one
    scale's."""
    import argparse

    import torch

    from weclip_hf import WeCLIPImageProcessor
    from weclip_hf.inference import image_logits, multiscale_flip_logits

    rgb = np.random.default_rng(0).integers(0, 256, (40, 56, 3), dtype=np.uint8)
    processor = WeCLIPImageProcessor(size={"longest_edge": 64})
    item = {"rgb": rgb, "pixel_values": processor(images=[rgb], return_tensors="pt")["pixel_values"][0]}
    args = argparse.Namespace(msf=True, scales=[1.0, 0.5], crf=False)
    [labels] = segment.segment(varied_tiny_model, processor, [item], args)
    pixel_values = item["pixel_values"][None]
    for route, agrees in ((multiscale_flip_logits, True), (image_logits, False)):
        logits = (
            route(varied_tiny_model, pixel_values, scales=[1.0, 0.5])
            if agrees
            else route(varied_tiny_model, pixel_values)
        )
        [expected] = processor.post_process_semantic_segmentation({"logits": logits}, target_sizes=[(40, 56)])
        assert torch.equal(labels, expected) == agrees


def test_an_overlay_shows_the_cams_of_the_predicted_foreground_classes(tiny_model, monkeypatch):
    """The overlay's CAM panels: one per foreground class in the label map (ids 1..C), by name."""
    import torch

    drawn = {}
    monkeypatch.setattr(
        segment_part("segmentation"), "overlay_figure", lambda rgb, maps, id2label, cams: drawn.update(cams)
    )
    labels = torch.zeros(8, 8, dtype=torch.long)
    labels[:4, :4] = 2
    item = {"rgb": np.zeros((8, 8, 3), np.uint8), "pixel_values": torch.zeros(3, 32, 32)}
    segment.overlay(tiny_model, item, labels)
    assert list(drawn) == [tiny_model.config.id2label[2]]


def test_a_label_map_without_a_record_of_an_input_now_unreadable_goes_with_overwrite(
    images, toy_weclip_dir, tmp_path
):
    """A label map without its input's record (an earlier version's folder) whose input is now unreadable: with
    --overwrite_output_dir it is removed and the input listed as skipped, not reported as this input's."""
    (tmp_path / "in").mkdir()
    shutil.copyfile(images / "toy0.png", tmp_path / "in" / "a.png")
    out = tmp_path / "out"
    argv = [
        "--model_name_or_path",
        str(toy_weclip_dir),
        "--images",
        str(tmp_path / "in"),
        "--output_dir",
        str(out),
    ]
    segment.main(argv)
    (out / ".state" / "inputs" / "a.json").unlink()
    (tmp_path / "in" / "a.png").write_bytes((images / "truncated.png").read_bytes())
    report = segment.main([*argv, "--overwrite_output_dir"])
    assert report["num_images"] == 0 and [s["input"] for s in report["skipped"]] == ["a"]
    assert not (out / "labels" / "a.png").exists()
