"""`weclip_hf.json_files`: what the JSON readers share refuses, naming the source (the readers' own tests: the
pathological records of test_checkpointing.py, test_reliability.py, ...)."""

import pytest

from weclip_hf.json_files import NotJSONError, parse_json, read_json, read_json_if_present


def test_json_is_read_and_each_pathology_named(tmp_path):
    file = tmp_path / "record.json"
    file.write_text('{"a": [1, 2.5, null], "b": {"c": "d"}}')
    assert read_json(file, expect=dict) == {"a": [1, 2.5, None], "b": {"c": "d"}}
    for text, problem in [
        ("[1, 2]", "holds a JSON array, expected a JSON object ({...})"),
        (
            '{"a": 1,}',
            "not valid JSON (Expecting property name enclosed in double quotes at line 1, column 9)",
        ),
        ('{"a": -Infinity}', "holds -Infinity, which is no JSON value"),
        ('{"a": -1e400}', "the number -1e400 is out of the range of a float"),
        ('{"b": {"a": 1, "a": 1}}', "the key 'a' is given twice in one object"),
        ('{"a": ' + "9" * 5000 + "}", "holds an integer too long to read (Exceeds the limit (4300 digits)"),
    ]:
        file.write_text(text)
        with pytest.raises(ValueError) as caught:
            read_json(file, expect=dict)
        assert str(caught.value).startswith(f"{file}: {problem}"), caught.value


def test_nan_where_allowed_a_size_cap_and_a_missing_file(tmp_path):
    file = tmp_path / "log.json"
    file.write_text('{"loss": NaN}')
    assert str(read_json(file, allow_nan=True)) == "{'loss': nan}"
    with pytest.raises(ValueError, match="more than 8 bytes, larger than any such file read here may be"):
        read_json(file, max_bytes=8)
    assert read_json_if_present(tmp_path / "absent.json") is None
    with pytest.raises(FileNotFoundError):
        read_json(tmp_path / "absent.json")
    (tmp_path / "dangling.json").symlink_to(
        "absent.json"
    )  # a link to nothing is refused, not taken for absent
    with pytest.raises(FileNotFoundError):
        read_json_if_present(tmp_path / "dangling.json")
    with pytest.raises(
        NotJSONError, match="^--config_overrides: not valid JSON"
    ):  # no JSON: a flag's bare word
        parse_json("{", "--config_overrides")
