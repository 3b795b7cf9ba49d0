"""YAML loading with line marks."""

from __future__ import annotations

from pathlib import Path

import pytest

from sandbox.config.yamlmarks import MarkedDict, MarkedList, load_yaml, locate
from sandbox.errors import ConfigError, Location


def load(tmp_path: Path, text: str) -> MarkedDict:
    path = tmp_path / "r.yaml"
    path.write_text(text)
    return load_yaml(path, "recipes/r.yaml")


def error(tmp_path: Path, text: str) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, text)
    return info.value


def test_marks_of_keys_and_items(tmp_path: Path) -> None:
    data = load(tmp_path, "name: web\npackages:\n  - vim\n  - curl\napp:\n  port: 8000\n")
    assert data == {"name": "web", "packages": ["vim", "curl"], "app": {"port": 8000}}
    assert isinstance(data["packages"], MarkedList)
    assert data.marks["packages"] == Location("recipes/r.yaml", 2, 1)
    assert data["packages"].marks[1] == Location("recipes/r.yaml", 4, 5)
    assert data["app"].location == Location("recipes/r.yaml", 6, 3)


def test_scalars_behave_like_safe_load(tmp_path: Path) -> None:
    data = load(tmp_path, "a: 1\nb: true\nc: ~\nd: '1'\ne: 1.5\nf: 0644\n")
    assert data == {"a": 1, "b": True, "c": None, "d": "1", "e": 1.5, "f": 420}


def test_syntax_error_has_line_and_column(tmp_path: Path) -> None:
    err = error(tmp_path, "a: 1\nb: [1, 2\nc: 3\n")
    assert len(err.issues) == 1
    issue = err.issues[0]
    assert issue.location.file == "recipes/r.yaml"
    assert issue.location.line == 3
    assert "syntax error" in issue.message and "flow sequence" in issue.message


def test_syntax_error_bad_indent(tmp_path: Path) -> None:
    issue = error(tmp_path, "a: 1\n b: 2\n").issues[0]
    assert (issue.location.line, issue.location.column) == (2, 3)
    assert "mapping values are not allowed" in issue.message


def test_duplicate_key(tmp_path: Path) -> None:
    issue = error(tmp_path, "name: a\npackages: []\nname: b\n").issues[0]
    assert issue.location.line == 3
    assert issue.message == "duplicate key 'name' (first at line 1)"


def test_empty_and_non_mapping(tmp_path: Path) -> None:
    assert error(tmp_path, "# only a comment\n").issues[0].message == "empty file"
    assert "must be a mapping" in error(tmp_path, "- a\n- b\n").issues[0].message


def test_unsafe_tag_refused(tmp_path: Path) -> None:
    issue = error(tmp_path, "a: !!python/object/apply:os.system [echo hi]\n").issues[0]
    assert issue.location.line == 1


def test_merge_keys(tmp_path: Path) -> None:
    data = load(tmp_path, "x: &x {a: 1, b: 2}\ny:\n  <<: *x\n  b: 3\n")
    assert data["y"] == {"a": 1, "b": 3}
    assert data["y"].marks["a"].line == 1
    assert data["y"].marks["b"].line == 4


def test_locate(tmp_path: Path) -> None:
    data = load(tmp_path, "users:\n  - name: a\n    sudo:\n      - /bin/x\n      - /bin/y\napp:\n  port: 1\n")
    assert locate(data, ("users", 0, "sudo", 1)).line == 5
    assert locate(data, ("users", 0, "nope")).line == 2  # the containing mapping
    assert locate(data, ("users", 7)).line == 2  # the list's location
    assert locate(data, ("app", "command")) == data["app"].location
    assert locate(data, ("missing",)) == data.location


# -- issue 10, class 9: hostile YAML costs under a second and says where ----------------------------


def _bomb(levels: int) -> str:
    lines = ['a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for i in range(1, levels + 1):
        lines.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]")
    return "name: web\n" + "\n".join(lines) + "\n"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (_bomb(9), "aliases are expanded"),  # 9**10 values: minutes (or memory) without a bound
        ("name: web\nx: " + "[" * 10_000 + "]" * 10_000 + "\n", "nested deeper than"),
        ("name: web\nx: " + "{a: " * 10_000 + "1" + "}" * 10_000 + "\n", "nested deeper than"),
        ("name: web\nx:\n" + "- " * 10_000 + "a\n", "nested deeper than"),  # compact block lists
    ],
    ids=["alias-bomb-9", "deep-flow-lists", "deep-flow-maps", "deep-block-lists"],
)
def test_bombs_and_deep_nesting_fail_fast_with_file_and_line(tmp_path: Path, text: str, message: str) -> None:
    import time

    # CPU time of this process (a bomb expanded would burn it), not wall time: other processes on a
    # loaded 2-core machine made the wall-clock bound flaky while measuring nothing of ours
    start = time.process_time()
    e = error(tmp_path, text)
    assert time.process_time() - start < 1.0
    [issue] = e.issues
    assert message in issue.message
    assert issue.location.file == "recipes/r.yaml" and issue.location.line in (2, 3, 4, 5, 66, 67)


def test_settings_of_only_comments_are_read_without_composing(tmp_path: Path) -> None:
    from sandbox.config.yamlmarks import holds_nothing

    assert holds_nothing("# nothing\n\n# here\n")
    assert not holds_nothing("a: 1\n")
    assert not holds_nothing("x: " + "[" * 10_000)  # bad YAML: not empty (load_yaml says where)
