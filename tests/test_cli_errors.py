"""Every user-caused failure through the real CLI: exit 2, one paragraph naming the file
and the field as the user spelled it, no traceback, no report directory left behind."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from dlsim.cli import app
from dlsim.output import slug

ROOT = Path(__file__).resolve().parents[1]
QUICK = (ROOT / "scenarios/quickstart.yaml").read_text()
PHONES = (ROOT / "scenarios/federated-phones.yaml").read_text()
ALLREDUCE = (ROOT / "scenarios/allreduce-dgx-a100.yaml").read_text()
PLAN = ["plan", "--model", "gpt2-124m", "--cluster", "dgx-a100", "--gpus", "8",
        "--global-batch", "64"]
runner = CliRunner()


def refused(tmp_path: Path, args: list[str], *names: str, quick: bool = False) -> str:
    """Run the CLI; assert exit 2, one paragraph naming ``names``, nothing written."""
    out = tmp_path / "out"
    full = [*args, "--out", str(out)] if "--out" not in args else args
    started = time.perf_counter()
    res = runner.invoke(app, full)
    took = time.perf_counter() - started
    text = res.output
    assert res.exit_code == 2, text
    assert "Traceback" not in text and text.strip().count("\n") == 0, text
    for name in names:
        assert name in text, (name, text)
    assert not out.exists() or not [p for p in out.iterdir() if p.name != ".cache"], text
    if quick:  # admission control refuses before any work (generous for a loaded host)
        assert took < 2, took
    return text


def scenario(tmp_path: Path, text: str, name: str = "s.yaml") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_binary_and_latin1_scenarios(tmp_path):
    (tmp_path / "b.yaml").write_bytes(b"\x00\x01\xff\xfe binary")
    refused(tmp_path, ["run", str(tmp_path / "b.yaml")], "b.yaml", "UTF-8")
    (tmp_path / "l.yaml").write_bytes("name: été\n".encode("latin-1"))
    refused(tmp_path, ["run", str(tmp_path / "l.yaml")], "l.yaml", "0xe9")


def test_negative_seed(tmp_path):
    refused(tmp_path, ["run", scenario(tmp_path, QUICK + "seed: -1\n")], "s.yaml", "'seed'")


def test_boolean_count(tmp_path):
    text = QUICK.replace("global_batch: 256", "global_batch: true")
    refused(tmp_path, ["run", scenario(tmp_path, text)], "training.global_batch", "boolean")


@pytest.mark.parametrize("where", ["file/x", "/proc/dlsim-x"])
def test_out_that_cannot_be_written(tmp_path, where):
    (tmp_path / "file").write_text("a regular file")
    target = str(tmp_path / where) if not where.startswith("/") else where
    refused(tmp_path, ["run", "quickstart", "--out", target], "--out")


@pytest.mark.parametrize("flag,value", [("--tokens", "nan"), ("--tokens", "-1"),
                                        ("--max-days", "inf"), ("--budget", "0"),
                                        ("--target-loss", "nan"), ("--target-loss", "-1"),
                                        ("--workers", "0")])
def test_plan_numbers(tmp_path, flag, value):
    refused(tmp_path, [*PLAN, flag, value], flag)


def test_plan_unknown_cluster_names_the_flag(tmp_path):
    text = refused(tmp_path, [*PLAN[:4], "dgx-a1000", *PLAN[5:]], "--cluster", "dgx-a1000")
    assert "'system'" not in text


def test_plan_nothing_fits_names_memory(tmp_path):
    args = ["plan", "--model", "gpt3-175b", "--cluster", "dgx-a100", "--gpus", "8",
            "--global-batch", "64"]
    refused(tmp_path, args, "--gpus", "memory")


def test_plan_deadline_binds(tmp_path):
    refused(tmp_path, [*PLAN, "--tokens", "1e12", "--max-days", "0.001"], "--max-days")


def test_plan_admission(tmp_path):
    refused(tmp_path, [*PLAN[:6], "1000000000", *PLAN[7:]], "--gpus", "100,000,000", quick=True)
    refused(tmp_path, [*PLAN, "--max-plans", "10"], "--max-plans", "limit of 10", quick=True)


@pytest.mark.parametrize("workers", ["0", "-3"])
def test_workers(tmp_path, workers):
    refused(tmp_path, ["sweep", "quickstart", "--vary", "training.global_batch=256,512",
                       "--workers", workers], "--workers")


def test_vary_list_value_and_typo(tmp_path):
    refused(tmp_path, ["sweep", "quickstart", "--vary", "placement=[0,1]"],
            "--vary placement", "16 ranks")
    text = refused(tmp_path, ["sweep", "quickstart", "--vary", "traning.global_batch=1,2"],
                   "--vary traning.global_batch", "did you mean 'training'")
    assert "quickstart.yaml" not in text
    refused(tmp_path, ["sweep", "quickstart", "--vary", "training.global_batch=[1"], "--vary")


def test_binary_calibration(tmp_path):
    (tmp_path / "cal.json").write_bytes(b"\xff\xfe\x00")
    refused(tmp_path, ["run", "quickstart", "--calibration", str(tmp_path / "cal.json")],
            "--calibration", "cal.json")


@pytest.mark.parametrize("corrupt,says", [
    (b"\x89PNG\xff\x00", "UTF-8"),
    (b"params_b,dp,stage,gb_per_device\n7.5,x,1,120\n", "line 2, column 'dp'"),
    (b"params_b,dp,stage,gb_per_device\n7.5,1\n", "line 2 has 2 values"),
    (b"params_b,dp\n", "no rows"),
    (b"a,b,c,d\n1,2,3,4\n", "no column 'params_b'")])
def test_corrupt_validation_csv(tmp_path, corrupt, says):
    data = tmp_path / "data"
    data.mkdir()
    for csv in (ROOT / "validation").glob("*.csv"):
        (data / csv.name).write_bytes(csv.read_bytes())
    (data / "zero_memory.csv").write_bytes(corrupt)
    refused(tmp_path, ["validate", "--data", str(data)], "zero_memory.csv", says)


def test_federated_shares_must_sum_to_one(tmp_path):
    text = PHONES.replace("share: 0.2", "share: 0.7")
    refused(tmp_path, ["run", scenario(tmp_path, text)], "federated", "sum to 1", "1.5")


def test_message_size_bound(tmp_path):
    text = ALLREDUCE.replace("size_bytes: 1073741824", "size_bytes: 1.0e+30")
    refused(tmp_path, ["run", scenario(tmp_path, text)], "collective.size_bytes")


def test_bucket_cap_zero_is_one_bucket(tmp_path):
    """Kept on purpose: gradient_buckets documents cap 0 as one bucket of every layer."""
    text = QUICK.replace("bucket_cap_mb: 25", "bucket_cap_mb: 0")
    res = runner.invoke(app, ["run", scenario(tmp_path, text), "--out", str(tmp_path / "o")])
    assert res.exit_code == 0, res.output


@pytest.mark.parametrize("old,new,field", [
    ("nodes: 2", "nodes: 125000000", "simulation.max_events"),
    ("global_batch: 256", "global_batch: 1000000000000000000", "simulation.max_events"),
    ("bucket_cap_mb: 25", "bucket_cap_mb: 25, steps: 1000000000", "simulation.max_events")])
def test_training_admission(tmp_path, old, new, field):
    refused(tmp_path, ["run", scenario(tmp_path, QUICK.replace(old, new))], field, "limit",
            quick=True)


@pytest.mark.parametrize("old,new", [("clients: 10000", "clients: 1000000000"),
                                     ("rounds: 200", "rounds: 10000000")])
def test_federated_admission(tmp_path, old, new):
    assert old in PHONES
    refused(tmp_path, ["run", scenario(tmp_path, PHONES.replace(old, new))],
            "federated.max_events", "estimated", quick=True)


def test_raising_the_limit_runs(tmp_path):
    text = QUICK + "simulation: {max_events: 1}\n"
    refused(tmp_path, ["run", scenario(tmp_path, text)], "simulation.max_events")


def test_slugs_distinct_readable_and_inside():
    assert slug("quickstart") == "quickstart" and slug("日本語") == "日本語"
    names = ["..", ".", "a/b", "a:b", "ü b", "u b", "../../etc", ".cache", "", "x" * 400]
    slugs = [slug(n) for n in names]
    assert len(set(slugs)) == len(names)
    for s in slugs:
        assert s and not s.startswith(".") and "/" not in s and len(s.encode()) <= 255


def test_no_sweep_function_advice():
    hits = [p for p in (ROOT / "dlsim").rglob("*.py") if "dlsim.sweep()" in p.read_text()]
    assert not hits


BUNDLED = [yaml.safe_load((ROOT / f"scenarios/{n}.yaml").read_text()) for n in
           ("quickstart", "allreduce-dgx-a100", "federated-wait-all")]
VALUES = st.one_of(st.integers(-3, 10**12), st.floats(allow_nan=True), st.booleans(),
                   st.text(max_size=6), st.none(), st.lists(st.integers(0, 4), max_size=3))


def _mutate(doc, path, value):
    node = doc
    for key in path[:-1]:
        node = node.setdefault(key, {}) if isinstance(node, dict) else {}
    if isinstance(node, dict):
        node[path[-1]] = value
    return doc


@st.composite
def mutated(draw):
    import copy

    doc = copy.deepcopy(draw(st.sampled_from(BUNDLED)))
    for _ in range(draw(st.integers(1, 3))):
        section = draw(st.sampled_from(sorted(doc)))
        sub = doc[section]
        keys = sorted(sub) if isinstance(sub, dict) else []
        path = [section, draw(st.sampled_from(keys))] if keys else [section]
        doc = _mutate(doc, path, draw(VALUES))
    return doc


def _outcome(tmp_path, res):
    out = tmp_path / "out"
    assert "Traceback" not in res.output
    if res.exit_code == 0:
        reports = [p for p in out.iterdir() if not p.name.startswith(".")]
        assert reports and all((p / "index.html").exists() for p in reports)
    else:
        assert res.exit_code == 2, (res.exit_code, res.output, res.exception)
        assert res.output.strip().count("\n") == 0, res.output
        assert not out.exists() or not [p for p in out.iterdir() if p.name != ".cache"]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                   HealthCheck.function_scoped_fixture])
@given(doc=mutated())
def test_fuzz_mutated_scenarios(tmp_path_factory, doc):
    tmp = tmp_path_factory.mktemp("fz")
    path = tmp / "s.yaml"
    path.write_text(yaml.safe_dump(doc, allow_unicode=True))
    _outcome(tmp, runner.invoke(app, ["run", str(path), "--out", str(tmp / "out"), "--json"]))


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                   HealthCheck.function_scoped_fixture])
@given(raw=st.binary(max_size=200))
def test_fuzz_random_bytes(tmp_path_factory, raw):
    tmp = tmp_path_factory.mktemp("fb")
    path = tmp / "s.yaml"
    path.write_bytes(raw)
    _outcome(tmp, runner.invoke(app, ["run", str(path), "--out", str(tmp / "out"), "--json"]))


@pytest.mark.parametrize("existing", [False, True])
def test_interrupted_write_leaves_nothing_half_written(tmp_path, monkeypatch, existing):
    """Ctrl-C while the second file is half written: no report, or the old one intact."""
    from dlsim.output import write_report_dir

    target = tmp_path / "report"
    if existing:
        write_report_dir(target, {"index.html": "old"})
    real = Path.write_text

    def interrupted(self, data, *args, **kwargs):
        if self.name == "index.html":
            real(self, data[:3], *args, **kwargs)
            raise KeyboardInterrupt
        return real(self, data, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", interrupted)
    with pytest.raises(KeyboardInterrupt):
        write_report_dir(target, {"summary.json": "{}", "index.html": "new report"})
    assert [p.name for p in tmp_path.iterdir()] == (["report"] if existing else [])
    if existing:  # the previous report is untouched
        assert [p.name for p in target.iterdir()] == ["index.html"]
        assert (target / "index.html").read_text() == "old"
