"""Reading scenario YAML: repeated keys and alias bombs refused, safe loading kept."""

from __future__ import annotations

import time

import pytest

from dlsim.contract.errors import ScenarioError
from dlsim.contract.loading import MAX_ALIAS_NODES, MAX_ALIASES, read_yaml


def read(tmp_path, text):
    path = tmp_path / "s.yaml"
    path.write_text(text)
    return read_yaml(path)


@pytest.mark.parametrize("text, field, lines", [
    ("name: a\nname: b\n", "name", "at lines 1 and 2"),
    ("name: a\ncluster:\n  preset: dgx-a100\n  nodes: 1\n  nodes: 2\n", "cluster.nodes",
     "at lines 4 and 5"),
    ("federated:\n  population:\n  - {device: phone-mid, share: 1, share: 2}\n",
     "federated.population.0.share", "on line 3"),
])
def test_a_repeated_key_is_refused_with_its_path_and_lines(tmp_path, text, field, lines):
    with pytest.raises(ScenarioError) as err:
        read(tmp_path, text)
    assert f"field '{field}' is given twice, {lines}" in err.value.message
    assert err.value.file.endswith("s.yaml")


def test_a_merge_key_may_be_overridden(tmp_path):
    data = read(tmp_path, "base: &b {preset: dgx-a100, nodes: 2}\ncluster:\n  <<: *b\n"
                          "  nodes: 4\n")
    assert data["cluster"] == {"preset": "dgx-a100", "nodes": 4}


def test_a_few_aliases_load_as_written(tmp_path):
    data = read(tmp_path, "a: &l {bandwidth_GBps: 5}\nb: [*l, *l]\n")
    assert data["b"] == [{"bandwidth_GBps": 5}] * 2


def billion_laughs(levels: int = 9, width: int = 9) -> str:
    lines = ["name: lol", "l1: &l1 [" + ", ".join(["lol"] * width) + "]"]
    for i in range(2, levels + 1):
        lines.append(f"l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * width) + "]")
    return "\n".join(lines) + "\n"


def test_a_billion_laughs_is_refused_at_once(tmp_path):
    text = billion_laughs()  # 72 aliases, under MAX_ALIASES, expanding to 9^9 values
    assert text.count("*") < MAX_ALIASES
    started = time.perf_counter()
    with pytest.raises(ScenarioError) as err:
        read(tmp_path, text)
    assert time.perf_counter() - started < 0.5
    written = 1 + 2 * 10 + 9  # the root, its 10 keys and values, l1's 9 items
    level = [1 + 9]  # a list node and its items, each item the level below expanded
    for _ in range(2, 10):
        level.append(1 + 9 * level[-1])
    expanded = 1 + 10 + 1 + sum(level)  # the root, its keys, name's value, l1..l9
    assert (f"aliases expand this document to {expanded:,} values from the {written:,} "
            f"written") in err.value.message
    assert f"at most {MAX_ALIAS_NODES:,} more" in err.value.message


def test_more_aliases_than_the_bound_are_refused(tmp_path):
    with pytest.raises(ScenarioError, match=f"more than {MAX_ALIASES} aliases"):
        read(tmp_path, "a: &a 1\nb: [" + ", ".join(["*a"] * (MAX_ALIASES + 1)) + "]\n")


def test_a_recursive_alias_is_refused(tmp_path):
    with pytest.raises(ScenarioError, match="contains it"):
        read(tmp_path, "a: &a [*a]\n")


def test_unsafe_tags_stay_refused(tmp_path):
    with pytest.raises(ScenarioError, match="not valid YAML"):
        read(tmp_path, "name: !!python/object/apply:os.system [echo hi]\n")


def test_a_yaml_error_quotes_the_input_only_in_part(tmp_path):
    with pytest.raises(ScenarioError) as err:
        read(tmp_path, "a: *" + "x" * 100_000 + "\n")
    assert "found undefined alias 'xxx" in err.value.message
    assert len(err.value.message) < 300
