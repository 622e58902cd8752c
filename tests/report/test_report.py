"""The HTML report: structure, escaping, embedded images and the messages a user acts on.

Pages are parsed with the standard library's ``html.parser`` so that the checks are about
elements and their text, not substrings that could appear anywhere in the markup.
"""

from __future__ import annotations

import base64
from html.parser import HTMLParser
from typing import Any

import pandas as pd
import pytest
import yaml

from dlsim.contract.span import Span
from dlsim.report import pages as report
from dlsim.report import plots
from dlsim.report.kinds import render_run
from dlsim.report.pages import render_sweep
from dlsim.report.units import format_bytes, format_count, format_seconds
from dlsim.results.result import Result

GB = 1e9
XSS = "<script>alert(1)</script>"


class Page(HTMLParser):
    """The parts of a page the tests look at: tags, ids, sections' text and table rows."""

    def __init__(self, html: str) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.sections: list[str] = []
        self.text: dict[str, str] = {}
        self.rows: dict[str, list[list[str]]] = {}
        self._section = ""
        self._row: list[str] | None = None
        self._cell: list[str] | None = None
        self._in_pre = False
        self.pre: dict[str, str] = {}
        self.feed(html)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attr = dict(attrs)
        self.tags.append((tag, attr))
        if tag == "section":
            self._section = attr.get("id") or ""
            self.sections.append(self._section)
        elif tag == "tr" and self._section:
            self._row = []
        elif tag in ("td", "th") and self._row is not None:
            self._cell = []
        elif tag == "pre":
            self._in_pre = True

    def handle_endtag(self, tag: str) -> None:
        if tag == "section":
            self._section = ""
        elif tag in ("td", "th") and self._cell is not None and self._row is not None:
            self._row.append("".join(self._cell).strip())
            self._cell = None
        elif tag == "tr" and self._row is not None:
            self.rows.setdefault(self._section, []).append(self._row)
            self._row = None
        elif tag == "pre":
            self._in_pre = False

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)
        if self._section:
            self.text[self._section] = self.text.get(self._section, "") + data
            if self._in_pre:
                self.pre[self._section] = self.pre.get(self._section, "") + data

    def attrs(self, tag: str, name: str) -> list[str]:
        return [a[name] or "" for t, a in self.tags if t == tag and name in a]

    def body_rows(self, section: str) -> list[list[str]]:
        """Table rows of a section without its header row(s)."""
        return [r for r in self.rows.get(section, []) if r and r[0] not in ("part", "src")]


def training_result(n_devices: int = 4, *, name: str = "gpt-tiny-dp4",
                    activations_bytes: float = 10 * GB) -> Result:
    """A hand-made 4-device data-parallel step: compute, then all-reduce, device 3 waits."""
    spans = []
    for d in range(n_devices):
        spans.append(Span(d, "compute", "forward", "compute", 0.0, 0.006))
        spans.append(Span(d, "compute", "backward", "compute", 0.006, 0.018))
        wait = 0.002 if d == 3 else 0.0
        spans.append(Span(d, "comm", "allreduce.wait", "wait", 0.012, 0.012 + wait))
        spans.append(Span(d, "comm", "allreduce", "comm", 0.012 + wait, 0.024))
    memory = {"params": 10 * GB, "grads": 10 * GB, "optimizer": 40 * GB,
              "activations": activations_bytes}
    total = sum(memory.values())
    summary: dict[str, Any] = {
        "name": name, "kind": "training", "devices": n_devices, "device": "a100-80gb",
        "precision": "bf16", "step_time_s": 0.024, "throughput_samples_per_s": 5333.3,
        "tflops_per_device": 140.2, "mfu": 0.449, "parameters": 1.3e9,
        "memory_per_device_bytes": total, "memory_breakdown_bytes": memory,
        "memory_capacity_bytes": 80 * GB, "fits_in_memory": total <= 80 * GB,
        "comm_bytes_total": 3 * 2.6e9 * 2,
        "breakdown_s": {"compute": 0.018, "exposed_comm": 0.004, "bubble": 0.0,
                        "straggler_wait": 0.002, "idle": 0.0},
        "simulation": {"fidelity": "full", "events": 1234, "flows": 56,
                       "seed": 7},
    }
    links = pd.DataFrame(
        [{"link": f"gpu{i}->gpu{(i + 1) % 4}", "src": f"gpu{i}", "dst": f"gpu{(i + 1) % 4}",
          "bandwidth_GBps": 300.0, "bytes": 1.95e9 * (i + 1), "busy_s": 0.002 * (i + 1),
          "utilisation": 0.05 * (i + 1)} for i in range(14)])
    scenario = {"name": name, "model": {"preset": "gpt-tiny"},
                "cluster": {"preset": "dgx-a100", "nodes": 1}, "precision": "bf16",
                "parallelism": {"data": n_devices, "tensor": 1, "pipeline": 1}}
    return Result(summary, scenario, spans, links)


def collective_result() -> Result:
    """A 4-rank ring all-reduce of 1 GB, summarised the way nccl-tests reports it."""
    summary = {"name": "allreduce-ring-4", "kind": "collective", "op": "allreduce",
               "algorithm": "ring", "devices": 4, "size_bytes": 1e9, "time_s": 0.08,
               "algbw_GBps": 12.5, "busbw_GBps": 18.75, "comm_bytes_total": 6e9,
               "simulation": {"fidelity": "full", "events": 96, "flows": 8,
                              "seed": 0}}
    spans = [Span(d, "comm", "allreduce", "comm", 0.0, 0.08) for d in range(4)]
    scenario = {"name": "allreduce-ring-4", "kind": "collective",
                "collective": {"op": "allreduce", "algorithm": "ring", "size_bytes": 1e9}}
    return Result(summary, scenario, spans)


def test_training_page_has_every_section_and_the_trace_link() -> None:
    page = Page(render_run(training_result()))
    assert page.sections == ["summary", "breakdown", "timeline", "memory", "links", "topology",
                             "scenario"]
    hrefs = page.attrs("a", "href")
    assert "trace.json" in hrefs and "https://ui.perfetto.dev" in hrefs
    summary = page.text["summary"]
    for shown in ("24 ms", "5,333", "samples/s", "140", "TFLOP/s", "44.9", "1.3B", "70 GB",
                  "of 80 GB · fits", "15.6 GB"):
        assert shown in summary


def test_collective_page_shows_bandwidths_and_omits_training_sections() -> None:
    page = Page(render_run(collective_result()))
    assert page.sections == ["summary", "timeline", "scenario"]
    summary = page.text["summary"]
    for shown in ("allreduce", "algorithm: ring", "1 GB", "80 ms", "12.5", "18.8", "GB/s"):
        assert shown in summary


def test_sections_are_omitted_when_the_result_lacks_their_data() -> None:
    result = Result({"name": "bare", "kind": "training", "step_time_s": 1.0}, {})
    page = Page(render_run(result))
    assert page.sections == ["summary"]
    assert page.attrs("img", "src") == []


def test_untrusted_scenario_text_is_escaped() -> None:
    result = training_result(name=XSS)
    result.scenario["model"] = {"preset": '"><img src=x onerror=alert(2)>'}
    html = render_run(result)
    page = Page(html)
    assert [t for t, _ in page.tags if t == "script"] == []
    assert all(src.startswith("data:image/png;base64,") for src in page.attrs("img", "src"))
    assert XSS in page.text["scenario"]
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html


def test_images_are_embedded_png_data_uris_and_nothing_is_fetched() -> None:
    page = Page(render_run(training_result()))
    sources = page.attrs("img", "src")
    assert len(sources) == 5  # breakdown, timeline, memory, links, topology
    for src in sources:
        payload = src.removeprefix("data:image/png;base64,")
        assert payload != src
        assert base64.b64decode(payload)[:8] == b"\x89PNG\r\n\x1a\n"
    assert not [t for t, _ in page.tags if t in ("script", "link", "iframe", "object")]
    external = [h for h in page.attrs("a", "href") if h.startswith(("http:", "https:", "//"))]
    assert external == ["https://ui.perfetto.dev"]


def test_breakdown_table_adds_up_to_the_step_time() -> None:
    page = Page(render_run(training_result()))
    rows = {r[0]: r[1:] for r in page.body_rows("breakdown")}
    assert rows["compute"] == ["18 ms", "75.0 %"]
    assert rows["exposed comm"] == ["4 ms", "16.7 %"]
    assert rows["straggler wait"] == ["2 ms", "8.3 %"]
    assert rows["total"][0] == "24 ms"
    assert "alert" not in page.text["breakdown"].lower()


def test_memory_overflow_names_the_amount_and_the_culprit() -> None:
    # 10 + 10 + 40 + 35 = 95 GB on an 80 GB device: 15 GB (18.8 %) over, activations tip it.
    page = Page(render_run(training_result(activations_bytes=35 * GB)))
    message = page.text["memory"]
    assert "Does not fit" in message
    assert "95 GB" in message and "15 GB (18.8 %) over" in message
    assert "params + grads + optimizer (60 GB) fit; the activations (35 GB) take it over" in message
    assert "does not fit" in page.text["summary"]


def test_memory_that_fits_has_no_overflow_message() -> None:
    page = Page(render_run(training_result()))
    assert "Does not fit" not in page.text["memory"]
    assert "Fits:" in page.text["memory"]


def test_timeline_shows_representative_devices_and_expands_to_the_first_16(
        monkeypatch: pytest.MonkeyPatch) -> None:
    drawn: list[set[int]] = []

    def capture(spans: list[Span], title: str = "") -> str:
        drawn.append({s.device for s in spans})
        return "data:image/png;base64,"

    monkeypatch.setattr(report.plots, "timeline_gantt", capture)
    page = Page(render_run(training_result(n_devices=20)))
    assert drawn[0] == {0, 1, 10, 18, 19}  # first two, middle, last two
    assert drawn[1] == set(range(16))  # the expandable one
    assert "4 more left out" in page.text["timeline"]


def test_a_pipeline_stage_s_point_to_point_streams_are_one_row(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from dlsim.report.sections import timeline_section

    streams: list[set[str]] = []
    monkeypatch.setattr(report.plots, "timeline_gantt",
                        lambda spans, title="": streams.append({s.stream for s in spans}) or "")
    spans = [Span(0, stream, "x", "comm", 0.0, 1.0) for stream in
             ("send-fwd", "recv-fwd", "send-bwd", "recv-bwd", "compute")]
    section = timeline_section(spans)
    assert section is not None and section["full"] is None  # one device: nothing to expand
    assert streams == [{"pipeline p2p", "compute"}]


def test_a_20000_span_timeline_renders() -> None:
    spans = [Span(i % 16, "compute" if i % 2 else "comm", "k", ("compute", "comm", "wait")[i % 3],
                  i * 1e-5, i * 1e-5 + 8e-6) for i in range(20_000)]
    assert plots.timeline_gantt(spans).startswith("data:image/png;base64,")


def test_links_table_lists_the_ten_busiest_busiest_first() -> None:
    page = Page(render_run(training_result()))
    rows = page.body_rows("links")
    assert len(rows) == 10
    assert rows[0] == ["gpu13", "gpu2", "300 GB/s", "27.3 GB", "28 ms", "70.0 %"]
    assert [r[0] for r in rows] == [f"gpu{i}" for i in range(13, 3, -1)]
    assert "10 busiest of 14" in page.text["links"]


def test_scenario_yaml_reads_back_as_the_scenario() -> None:
    result = training_result(name=XSS)
    page = Page(render_run(result))
    assert yaml.safe_load(page.pre["scenario"]) == result.scenario


def sweep_table() -> pd.DataFrame:
    return pd.DataFrame(
        [{"devices": n, "algorithm": alg, "busbw_GBps": 100.0 * (1 - 1 / n)}
         for alg in ("ring", "tree", XSS) for n in (2, 8, 64, 1024)])


def test_sweep_page_lists_every_row_and_escapes_text() -> None:
    table = sweep_table()
    html = render_sweep(XSS, table, "devices", "busbw_GBps", "algorithm", {"name": XSS})
    page = Page(html)
    assert page.sections == ["plot", "table", "scenario"]
    assert [t for t, _ in page.tags if t == "script"] == []
    header, *rows = page.rows["table"]
    assert header == ["devices", "algorithm", "busbw_GBps"]
    assert len(rows) == len(table)
    expected = [[f"{n:,}", alg, f"{bw:.4g}"] for n, alg, bw in table.itertuples(index=False)]
    assert rows == expected
    assert all(s.startswith("data:image/png;base64,") for s in page.attrs("img", "src"))
    assert yaml.safe_load(page.pre["scenario"]) == {"name": XSS}


def test_sweep_without_group_and_missing_columns() -> None:
    table = sweep_table().query("algorithm == 'ring'")
    page = Page(render_sweep("one line", table, "devices", "busbw_GBps", None, {}))
    assert page.sections == ["plot", "table"]
    with pytest.raises(KeyError, match="nodes"):
        render_sweep("bad", table, "nodes", "busbw_GBps", None, {})


def test_log_x_only_beyond_two_decades() -> None:
    assert plots.wants_log(pd.Series([2, 8, 64, 1024]))
    assert not plots.wants_log(pd.Series([1, 10, 100]))
    assert not plots.wants_log(pd.Series([0, 10, 1000]))
    assert not plots.wants_log(pd.Series(["ring", "tree"]))


@pytest.mark.parametrize(("seconds", "text"), [
    (0.0123, "12.3 ms"), (1.5e-6, "1.5 µs"), (2.0, "2 s"), (0.9996, "1 s"), (0.0, "0 s"),
    (11135.0, "3.09 h"), (611821.0, "7.08 days"), (3000.0, "3,000 s"), (3599.0, "1 h")])
def test_format_seconds(seconds: float, text: str) -> None:
    assert format_seconds(seconds) == text


def test_format_bytes_and_counts() -> None:
    assert format_bytes(80e9) == "80 GB"
    assert format_bytes(1.5e12) == "1.5 TB"
    assert format_bytes(512) == "512 B"
    assert format_count(175e9) == "175B"
    assert format_count(25.6e6) == "25.6M"


def test_topology_of_a_big_cluster_draws_its_busiest_cables_and_says_so() -> None:
    # a ring of 100 devices: 100 cables, each carried both ways; cable i is the busiest first
    n = 100
    rows = [{"link": f"{a}->{b}", "src": str(a), "dst": str(b), "bandwidth_GBps": 25.0,
             "bytes": 1e9, "busy_s": 0.01, "utilisation": u}
            for i in range(n) for a, b, u in ((i, (i + 1) % n, 1 - i / n),
                                              ((i + 1) % n, i, 0.5 * (1 - i / n)))]
    small = training_result()
    section = report._topology_section(pd.DataFrame(rows))
    assert (section["shown"], section["lines"]) == (report.TOPOLOGY_MAX_CABLES, n)
    big = Result(small.summary, small.scenario, small.spans, pd.DataFrame(rows))
    note = Page(render_run(big)).text["topology"]
    assert f"{report.TOPOLOGY_MAX_CABLES} busiest of {n} lines" in note
    assert "busiest" not in Page(render_run(small)).text["topology"]


def test_parity_plot_and_bars_for_choices_draw_what_they_are_given():
    """The validation page's parity plot leaves out rows without a prediction (listed
    tables); a sweep over choices is drawn as one bar per (choice, group) pair."""
    from unittest import mock

    import matplotlib.axes

    rows = pd.DataFrame({"table": ["a", "a", "b"], "measured": [1.0, 10.0, 5.0],
                         "predicted": [1.1, 9.0, float("nan")]})
    with mock.patch("matplotlib.axes.Axes.plot", autospec=True,
                    side_effect=matplotlib.axes.Axes.plot) as drawn:
        assert plots.parity(rows).startswith("data:image/png;base64,")
    points = [c for c in drawn.call_args_list if len(c.args) >= 4 and c.args[3] == "o"]
    assert [list(c.args[1]) for c in points] == [[1.0, 10.0]]  # table b has no prediction
    sweep = pd.DataFrame({"fabric": ["fat-tree", "rail", "fat-tree", "rail"],
                          "op": ["allreduce", "allreduce", "alltoall", "alltoall"],
                          "time_s": [3.6, 3.6, 16.8, 10.5]})
    with mock.patch("matplotlib.axes.Axes.bar", autospec=True,
                    side_effect=matplotlib.axes.Axes.bar) as bars:
        plots.sweep_plot(sweep, "op", "time_s", "fabric")
    heights = [list(c.args[2]) for c in bars.call_args_list]
    assert heights == [[3.6, 16.8], [3.6, 10.5]]  # per fabric, in the sweep's op order


def test_axis_labels_say_the_quantity_and_its_unit():
    from dlsim.report.units import axis_label

    assert axis_label("step_time_s") == "step time (s)"
    assert axis_label("collective.size_bytes") == "size (bytes)"
    assert axis_label("breakdown_s.exposed_comm") == "exposed comm (s)"
    assert axis_label("busbw_GBps") == "bus bandwidth (GB/s)"
    assert axis_label("parallelism.data") == "data-parallel degree"
    assert axis_label("throughput_samples_per_s") == "throughput (samples/s)"


def test_a_series_has_one_colour_in_every_plot_of_a_report():
    colours = plots.series_colours([16, 2, "4", 2])
    assert colours == plots.series_colours(["4", "2", "16"])  # by value text, not order
    assert len(set(colours.values())) == 3


def test_a_cluster_topology_is_drawn_by_node_and_switch() -> None:
    """Four nodes of two devices, each device on its node's switch, each node's NIC on a
    leaf: devices fold into their nodes, nodes 0-1 (leaf0) and 2-3 (leaf1) into one group
    each, and a line stands for the cables between two groups, at the busiest one's load."""
    from dlsim.report.topology import aggregate

    rows = []
    for node in range(4):
        for d in range(2):
            rows.append((str(2 * node + d), f"n{node}/nvswitch", 0.1 * d))
        rows.append((f"n{node}/nvswitch", f"n{node}/nic0", 0.2))
        rows.append((f"n{node}/nic0", f"leaf{node // 2}", 0.3 + 0.1 * node))
    rows.append(("leaf0", "spine0", 0.9))
    rows.append(("leaf1", "spine0", 0.4))
    links = pd.DataFrame(rows, columns=["src", "dst", "utilisation"])
    grouped = aggregate(links).set_index(["src", "dst"])
    assert set(grouped.index) == {("leaf0", "nodes 0–1"), ("leaf1", "nodes 2–3"),
                                  ("leaf0", "spine0"), ("leaf1", "spine0")}
    assert grouped.loc[("leaf1", "nodes 2–3"), "utilisation"] == pytest.approx(0.6)
    assert grouped.loc[("leaf1", "nodes 2–3"), "cables"] == 2


def test_a_sweep_table_leads_with_what_was_varied_and_the_result():
    from dlsim.report.pages import _cell, _sweep_columns

    table = pd.DataFrame({"name": ["a", "a"], "devices": [8, 8], "zero": [0, 3],
                          "memory_bytes": [9.7e10, 7.6e10], "step_time_s": [0.62, 0.60]})
    table = table[["zero", "name", "devices", "memory_bytes", "step_time_s"]]
    assert _sweep_columns(table, ["zero"], "step_time_s") == ["zero", "step_time_s",
                                                             "memory_bytes"]
    # a table whose result already stands before what was varied keeps its order
    rows = pd.DataFrame({"table": ["a", "b"], "case": ["x", "y"], "predicted": [1.0, 2.0],
                         "measured": [1.1, 2.2], "error_pct": [-9.1, -9.2]})
    assert _sweep_columns(rows, ["measured", "table"], "predicted") == list(rows.columns)
    assert _cell("memory_bytes", 9.7e10) == "97 GB"
    assert _cell("step_time_s", 0.62) == "620 ms"


def test_pipeline_stages_table_groups_alike_stages_and_names_the_busiest() -> None:
    """Four one-layer stages, the last the widest: the stage that sets the pace is named,
    and the two equal middle stages share one row."""
    import dlsim

    result = dlsim.simulate({
        "name": "pp-unequal", "model": {"kind": "mlp", "widths": [2048, 1024, 1024, 1024, 4096]},
        "cluster": {"topology": "switch", "devices": 4, "device": "a100-sxm4-80gb",
                    "link": {"bandwidth_GBps": 1e200, "latency_us": 0}},
        "training": {"global_batch": 128, "microbatch": 16, "optimizer": "sgd"},
        "parallelism": {"pipeline": 4, "schedule": "1f1b"}})
    stages = result.summary["breakdown_by_stage_s"]
    busy = [s["compute"] + s["exposed_comm"] for s in stages]
    page = Page(render_run(result))
    labels = [r[0] for r in page.body_rows("breakdown") if r[0][0].isdigit()]
    assert labels == ["0", "1–2", "3"]
    assert busy.index(max(busy)) == 3
    assert "Stage 3 is the busiest" in page.text["breakdown"]


def test_a_sweep_over_whole_sections_wraps_its_tick_labels():
    """Varying a whole section gives choices like "data=32, tensor=8, ..." (the sweep's
    labels); unwrapped they ran into one another and matplotlib gave up its layout. Each is
    wrapped to its share of the axis, long ones cut at eight lines."""
    import warnings

    long = ["data=32, tensor=8, pipeline=4, schedule=interleaved, virtual_stages=8, "
            "zero_stage=1, sequence_parallel=True, recompute=none" + extra
            for extra in ("", ", tp_comm_overlap=True, overlap_param_gather=True")]
    sweep = pd.DataFrame({"parallelism": long, "step_time_s": [18.56, 16.66]})
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the layout warning the long labels raised
        assert plots.sweep_plot(sweep, "parallelism", "step_time_s", None).startswith(
            "data:image/png;base64,")
    labels = plots.choice_labels(long)
    assert all(max(map(len, text.split("\n"))) <= 48 for text in labels)
    assert [text.replace("\n", " ") for text in labels] == long
    many = plots.choice_labels(["x" * 10 + " y" * 200] * 8)
    assert all(text.count("\n") == plots.TICK_LINES - 1 and text.endswith("…")
               for text in many)
