"""The one JSON reader every format goes through: what it refuses, in one line naming the file."""
import os

import pytest

from megatron_galvatron.errors import UserError
from megatron_galvatron.json_file import read_json, read_object


@pytest.mark.parametrize("body,expected", [
    (b'{"a": 1, "a": 2}', "duplicate key 'a'"),
    (b'{"a": NaN}', "NaN is not a JSON number"),
    (b'{"a": -Infinity}', "-Infinity is not a JSON number"),
    (b'{"a": \xff}', "not UTF-8"),
    (b'  \n', "is empty"),
    (b'[' * 100000 + b']' * 100000, "nests too deeply"),
    (b'[1, 2]', "must hold a JSON object, not a list"),
    (b'{"a": 1', "is not valid JSON"),
])
def test_bad_json_is_one_line_naming_the_file(tmp_path, body, expected):
    path = tmp_path / "x.json"
    path.write_bytes(body)
    with pytest.raises(UserError) as e:
        read_object(str(path), "plan", "fix it")
    msg = str(e.value)
    assert expected in msg and str(path) in msg and "\n" not in msg and msg.endswith(": fix it"), msg


def test_paths_that_are_no_file(tmp_path):
    for path, expected in [("", "empty path"), (str(tmp_path / "missing.json"), "does not exist"),
                           (str(tmp_path), "is a directory"), ("/dev/zero", "not a regular file")]:
        with pytest.raises(UserError, match=expected):
            read_object(path, "plan")
    os.symlink(tmp_path / "nowhere", tmp_path / "dangling.json")
    with pytest.raises(UserError, match="does not exist"):
        read_object(str(tmp_path / "dangling.json"), "plan")


def test_size_limit_and_raw_bytes(tmp_path):
    path = tmp_path / "x.json"
    path.write_bytes(b'{"a": [1, 2.5, "\\u00e9"]}')
    value, raw = read_json(str(path), "profile")
    assert value == {"a": [1, 2.5, "\u00e9"]} and raw == path.read_bytes()
    with pytest.raises(UserError, match="too much to be a profile"):
        read_json(str(path), "profile", max_bytes=8)
