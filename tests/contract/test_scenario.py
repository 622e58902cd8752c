"""The scenario contract: one model per kind, unknown keys with a did-you-mean at every
level, every error one paragraph (CLI exit 2, repeated YAML keys included)."""

from __future__ import annotations

import pytest
from pydantic import TypeAdapter
from typer.testing import CliRunner

from dlsim.cli import app
from dlsim.contract.errors import EXCERPT_CHARS, ScenarioError
from dlsim.contract.scenario import (
    KINDS,
    CollectiveScenario,
    EdgeInferenceScenario,
    FederatedScenario,
    Scenario,
    TrainingScenario,
    load_scenario,
)

COMMON = ["name", "kind", "description", "seed", "sweep"]
# The sections each kind reads (grep of dlsim/kinds): the public contract, written out.
SECTIONS = {
    "training": COMMON + ["model", "cluster", "precision", "training", "parallelism",
                          "communication", "placement", "sync", "stragglers", "failures",
                          "convergence", "simulation"],
    "collective": COMMON + ["cluster", "collective", "placement", "simulation"],
    "federated": COMMON + ["model", "precision", "federated", "convergence"],
    "edge-inference": COMMON + ["model", "precision", "inference"],
}
REQUIRED = {"training": ["name", "model", "cluster", "training"],
            "collective": ["name", "cluster", "collective"],
            "federated": ["name", "federated"],
            "edge-inference": ["name", "model", "inference"]}
POPULATION = [{"device": "phone-mid", "share": 1.0}]
VALID = {
    "training": {"name": "t", "model": {"preset": "gpt2-124m"},
                 "cluster": {"preset": "dgx-a100"}, "training": {"global_batch": 8}},
    "collective": {"name": "c", "kind": "collective", "cluster": {"preset": "dgx-a100"},
                   "collective": {"size_bytes": 1e6}},
    "federated": {"name": "f", "kind": "federated",
                  "federated": {"clients": 10, "population": POPULATION,
                                "flops_per_sample": 1e9, "parameters": 1000}},
    "edge-inference": {"name": "e", "kind": "edge-inference", "model": {"preset": "resnet50"},
                       "inference": {"device": "phone-mid",
                                     "server": {"device": "a100-pcie-80gb", "link": "lte"}}},
}
MODELS = {"training": TrainingScenario, "collective": CollectiveScenario,
          "federated": FederatedScenario, "edge-inference": EdgeInferenceScenario}
# A value each section accepts, to add a section to a kind that lacks it.
SAMPLE = {"model": {"preset": "gpt2-124m"}, "cluster": {"preset": "dgx-a100"},
          "precision": "fp16", "training": {"global_batch": 8}, "parallelism": {"data": 1},
          "communication": {"data_parallel": "ring"}, "placement": "pack", "sync": "bsp",
          "stragglers": {"fixed": {0: 2.0}}, "failures": {"mtbf_s": 1e6},
          "convergence": {"min_steps": 10, "noise_batch": 10}, "simulation": {"fidelity": "full"},
          "collective": {"size_bytes": 1e6}, "federated": VALID["federated"]["federated"],
          "inference": VALID["edge-inference"]["inference"]}


def message(data) -> str:
    with pytest.raises(ScenarioError) as err:
        load_scenario(data)
    return str(err.value)


# --- one model per kind -------------------------------------------------------------------

@pytest.mark.parametrize("kind", sorted(SECTIONS))
def test_each_kind_has_exactly_its_sections(kind):
    assert set(KINDS[kind].model_fields) == set(SECTIONS[kind])
    assert sorted(k for k, f in KINDS[kind].model_fields.items() if f.is_required()) == sorted(
        REQUIRED[kind])


@pytest.mark.parametrize("kind", sorted(VALID))
def test_each_kind_loads_to_its_own_model(kind):
    scenario = load_scenario(VALID[kind])
    assert type(scenario) is MODELS[kind] and scenario.kind == kind
    assert type(TypeAdapter(Scenario).validate_python(VALID[kind])) is MODELS[kind]


def test_kind_defaults_to_training():
    data = dict(VALID["training"])
    assert "kind" not in data
    scenario = load_scenario(data)
    assert isinstance(scenario, TrainingScenario)
    assert scenario.model_dump(mode="json", exclude_none=True)["kind"] == "training"


def test_a_dump_holds_only_the_kinds_sections_in_the_contract_order():
    dumped = load_scenario(VALID["collective"]).model_dump(mode="json", exclude_none=True)
    assert list(dumped) == ["name", "kind", "description", "cluster", "collective",
                            "placement", "seed", "simulation"]
    dumped = load_scenario(VALID["training"]).model_dump(mode="json", exclude_none=True)
    assert list(dumped) == ["name", "kind", "description", "model", "cluster", "precision",
                            "training", "parallelism", "communication", "placement", "sync",
                            "seed", "simulation"]


@pytest.mark.parametrize("kind, section", [
    (kind, section) for kind in sorted(SECTIONS) for section in sorted(SAMPLE)
    if section not in SECTIONS[kind]])
def test_a_section_of_another_kind_is_refused_naming_the_allowed_ones(kind, section):
    with pytest.raises(ScenarioError) as err:
        load_scenario({**VALID[kind], section: SAMPLE[section]})
    assert err.value.field == section
    text = str(err.value)
    article = "an" if kind == "edge-inference" else "a"
    assert f"{article} {kind} scenario has no '{section}' section" in text
    assert "its sections are " + ", ".join(KINDS[kind].model_fields) in text
    owners = [k for k in SECTIONS if section in SECTIONS[k]]
    assert f"'{section}' belongs to {', '.join(owners)} scenarios" in text


@pytest.mark.parametrize("kind, section", [
    (kind, section) for kind in sorted(REQUIRED) for section in REQUIRED[kind]])
def test_a_missing_required_section_is_asked_for(kind, section):
    data = {k: v for k, v in VALID[kind].items() if k != section}
    with pytest.raises(ScenarioError) as err:
        load_scenario(data)
    assert err.value.field == section and f"needs '{section}" in err.value.message


def test_a_misspelt_section_is_named_with_the_one_meant_and_not_asked_for_again():
    data = {k: v for k, v in VALID["collective"].items() if k != "cluster"}
    data["clustr"] = {"preset": "dgx-a100"}
    text = message(data)
    assert "no 'clustr' section (did you mean 'cluster'?)" in text and "needs" not in text


def test_several_top_level_problems_are_one_paragraph():
    text = message({"kind": "collective", "model": {}, "collective": {"size_bytes": 1}})
    assert "no 'model' section" in text and "needs 'name'" in text and "needs 'cluster" in text
    assert "\n" not in text


def test_an_unknown_kind_names_the_kinds_and_the_closest():
    with pytest.raises(ScenarioError) as err:
        load_scenario({**VALID["collective"], "kind": "colective"})
    assert err.value.field == "kind"
    assert "(did you mean 'collective'?)" in err.value.message
    assert "training, collective, federated, edge-inference" in err.value.message
    with pytest.raises(ScenarioError, match="not a scenario kind; the kinds"):
        load_scenario({**VALID["collective"], "kind": ["collective"]})


# --- unknown keys below the top level -----------------------------------------------------

@pytest.mark.parametrize("kind, path, typo, meant", [
    ("collective", ["cluster"], "prest", "preset"),
    ("collective", ["collective"], "sise_bytes", "size_bytes"),
    ("training", ["training"], "global_bath", "global_batch"),
    ("training", ["parallelism"], "tensr", "tensor"),
    ("federated", ["federated", "population", 0], "shar", "share"),      # a list item
    ("edge-inference", ["inference", "server"], "devize", "device"),
])
def test_an_unknown_nested_key_gets_a_did_you_mean_and_the_allowed_names(kind, path, typo,
                                                                         meant):
    data = _deep_copy(VALID[kind])
    data.setdefault(path[0], {})
    node = data
    for key in path:
        node = node[key]
    allowed = list(node_model(kind, path).model_fields)
    node[typo] = node.pop(meant, 1)
    text = message(data)
    where = ".".join(map(str, path))
    assert f"field '{where}.{typo}': no such field (did you mean '{meant}'?); " in text
    assert f"'{where}' takes {', '.join(allowed)}" in text


def node_model(kind, path):
    """The model at ``path`` found by hand, to check the walk through the field types."""
    from dlsim.contract import federated, inference, scenario
    return {("cluster",): scenario.ClusterSpec, ("collective",): scenario.CollectiveSpec,
            ("training",): scenario.TrainingSpec, ("parallelism",): scenario.ParallelismSpec,
            ("federated", "population", 0): federated.DeviceClassSpec,
            ("inference", "server"): inference.TierSpec}[tuple(path)]


def _deep_copy(data):
    if isinstance(data, dict):
        return {k: _deep_copy(v) for k, v in data.items()}
    if isinstance(data, list):
        return [_deep_copy(v) for v in data]
    return data


def test_an_unknown_key_inside_a_union_member_is_named_through_it():
    data = _deep_copy(VALID["edge-inference"])
    data["inference"]["server"]["link"] = {"upp_GBps": 1.0, "down_GBps": 1.0}
    text = message(data)
    assert ("field 'inference.server.link.upp_GBps': no such field (did you mean "
            "'up_GBps'?); 'inference.server.link' takes up_GBps, down_GBps, latency_us") in text
    assert "valid string" not in text and "LinkIn" not in text  # the member it did not mean


def test_a_value_of_no_member_of_a_union_is_one_problem():
    text = message({**VALID["collective"], "placement": "packk"})
    assert text == ("Error: field 'placement': Input should be 'pack' or 'spread', or a valid "
                    "list (got 'packk').")


def test_a_key_with_nothing_close_lists_what_is_allowed():
    text = message({**VALID["collective"], "cluster": {"preset": "dgx-a100", "zzzz": 1}})
    assert "field 'cluster.zzzz': no such field; 'cluster' takes preset, nodes," in text


def test_a_long_value_is_quoted_only_in_part():
    text = message({**VALID["training"], "precision": "x" * 100_000})
    assert len(text) < 300 and "x" * (EXCERPT_CHARS - 4) + "…" in text


# --- the CLI: exit 2, one paragraph naming the file, the field and what is allowed --------

COLLECTIVE = "name: c\nkind: collective\ncluster: {preset: dgx-a100}\n"
CLI_BAD = {
    "model on a collective": (COLLECTIVE + "collective: {size_bytes: 1e6}\n"
                              "model: {preset: gpt2-124m}\n",
                              ["field 'model'", "a collective scenario has no 'model' section",
                               "its sections are name, kind, description, cluster, collective"]),
    "training on a collective": (COLLECTIVE + "collective: {size_bytes: 1e6}\n"
                                 "training: {global_batch: 8}\n",
                                 ["field 'training'", "no 'training' section",
                                  "belongs to training scenarios",
                                  "cluster, collective, placement, seed, simulation, sweep"]),
    "nested typo": ("name: c\nkind: collective\ncluster: {prest: dgx-a100}\n"
                    "collective: {size_bytes: 1e6}\n",
                    ["field 'cluster.prest'", "did you mean 'preset'?",
                     "'cluster' takes preset, nodes"]),
    "repeated section": (COLLECTIVE + "collective: {size_bytes: 1e6}\n"
                         "cluster: {preset: dgx-h100}\n",
                         ["field 'cluster' is given twice, at lines 3 and 5"]),
    "repeated nested key": (COLLECTIVE + "collective:\n  size_bytes: 1e6\n  op: allreduce\n"
                            "  size_bytes: 2e6\n",
                            ["line 7", "field 'collective.size_bytes' is given twice, "
                             "at lines 5 and 7"]),
}


@pytest.mark.parametrize("case", sorted(CLI_BAD))
def test_cli_contract_errors_exit_2_in_one_paragraph(tmp_path, case):
    text, fragments = CLI_BAD[case]
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    out = tmp_path / "reports"
    res = CliRunner().invoke(app, ["run", str(path), "--out", str(out)])
    assert res.exit_code == 2, res.output
    assert "Traceback" not in res.output and f"Error in {path}" in res.output
    assert res.output.strip().count("\n") == 0  # one paragraph, on one line
    for fragment in fragments:
        assert fragment in res.output
    assert not out.exists()


def test_cli_calibration_on_a_kind_without_a_cluster_names_the_option(tmp_path):
    path = tmp_path / "fed.yaml"
    path.write_text("name: f\nkind: federated\nfederated:\n  clients: 10\n  population:\n"
                    "  - {device: phone-mid, share: 1.0}\n  flops_per_sample: 1e9\n"
                    "  parameters: 1000\n")
    res = CliRunner().invoke(app, ["run", str(path), "--calibration", "x.json", "--out",
                                   str(tmp_path / "out")])
    assert res.exit_code == 2
    assert "field '--calibration'" in res.output and "federated scenario has none" in res.output
