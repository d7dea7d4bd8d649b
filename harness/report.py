"""The benchmark report, built from results files (``harness report RESULTS... -o DIR``).

It writes ``DIR/report.md`` (its plots beside it as PNG files, for a CI job summary or a pull
request) and ``DIR/report.html``, one self-contained file (plots inline, no network) that CI
publishes as an artifact. Both hold, for each run: the machine and the revision it measured, every
figure against its same-run baseline and its budget, and the plots the figures allow:

- every figure's ratio to its baseline, coloured by its budget's verdict;
- throughput against flow count, for the figures named ``... N flows ...`` (one line per series);
- latency CDFs, for the figures that kept their probes (``extra["latencies_us"]``);
- the distribution over buckets, for the figures that kept it (``extra["buckets"]``);
- flow metrics' zero-loss ratios beside the seed's (``bpf.flowmon.model.SEED_RATIOS``), a table and
  a plot, for the storages and flow counts the seed measured;

then the gate's table against the history (``--history DIR``, ``harness.gate``) and the preflight
record of each DUT interface. The HTML marks in ``<body data-plots-rendered>`` how many of its plots
the browser decoded, for a test (and a reader) to check that the page rendered.

Not for: judging a run (``harness.gate``) or measuring (``harness.measure``).
"""

from __future__ import annotations

import base64
import html
import io
import re
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no display: CI runners and this harness render to files

import matplotlib.pyplot as plt

from bpf.flowmon.model import SEED_RATIOS
from harness import gate
from harness import results as results_file

FLOWS = re.compile(r"^(?P<head>.*?) (?P<flows>\d+) flows(?P<tail>.*)$")
FLOWMON_ZERO_LOSS = re.compile(r"^flowmon (?P<storage>\w+) (?P<flows>\d+) flows zero-loss$")
BUDGET_COLOURS = {True: "#2a9d8f", False: "#e63946", None: "#8d99ae"}


@dataclass
class Plot:
    title: str
    png: bytes
    file: str  # its name beside report.md


def _png(figure: plt.Figure) -> bytes:
    buffer = io.BytesIO()
    figure.tight_layout()
    figure.savefig(buffer, format="png", dpi=110)
    plt.close(figure)
    return buffer.getvalue()


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def ratio_plot(run: dict[str, Any]) -> bytes | None:
    figures = [f for f in run["figures"] if f.get("ratio") is not None]
    if not figures:
        return None
    fig, ax = plt.subplots(figsize=(9, 0.28 * len(figures) + 1.2))
    names = [f"{f['name']} ({f['unit']})" for f in figures]
    ax.barh(
        names,
        [f["ratio"] for f in figures],
        color=[BUDGET_COLOURS[f.get("budget_met")] for f in figures],
    )
    ax.axvline(1.0, color="black", linewidth=0.8)
    ax.invert_yaxis()
    ax.set_xlabel("ratio to the same-run baseline (green: budget met, red: missed, grey: none)")
    ax.tick_params(axis="y", labelsize=7)
    return _png(fig)


def flow_series(run: dict[str, Any]) -> dict[str, dict[str, list[tuple[int, float]]]]:
    """Per data plane (the name's first word), per series (the name without its flow count): the
    (flows, median) points of the throughput figures."""
    planes: dict[str, dict[str, list[tuple[int, float]]]] = defaultdict(lambda: defaultdict(list))
    for f in run["figures"]:
        found = FLOWS.match(f["name"])
        if found and f["unit"].lower().endswith("pps"):
            series = f"{found['head']}{found['tail']}".strip()
            planes[f["name"].split()[0]][series].append(
                (int(found["flows"]), f["subject"]["median"])
            )
    return {
        plane: {s: sorted(points) for s, points in series.items() if len(points) > 1}
        for plane, series in planes.items()
        if any(len(points) > 1 for points in series.values())
    }


def flows_plot(plane: str, series: dict[str, list[tuple[int, float]]], unit: str) -> bytes:
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for name, points in sorted(series.items()):
        ax.plot([x for x, _ in points], [y for _, y in points], marker="o", label=name)
    ax.set_xscale("log")
    ax.set_xlabel("flows")
    ax.set_ylabel(unit)
    ax.set_title(f"{plane}: throughput against flow count")
    ax.legend(fontsize=7)
    return _png(fig)


def latency_plot(figure: dict[str, Any]) -> bytes:
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for label, values in sorted(figure["extra"]["latencies_us"].items()):
        ordered = sorted(values)
        n = len(ordered)
        ax.step(ordered, [(i + 1) / n for i in range(n)], where="post", label=label)
    ax.set_xscale("log")
    ax.set_xlabel("one-way latency (us)")
    ax.set_ylabel("fraction of probes")
    ax.set_title(figure["name"])
    ax.legend()
    return _png(fig)


def buckets_plot(figure: dict[str, Any]) -> bytes:
    counts = figure["extra"]["buckets"]
    fig, ax = plt.subplots(figsize=(8, 4))
    ax.bar(range(len(counts)), counts)
    mean = sum(counts) / len(counts) if counts else 0
    ax.axhline(mean, color="black", linewidth=0.8, label="even spread")
    ax.set_xlabel("bucket")
    ax.set_ylabel("packets")
    ax.set_title(f"{figure['name']}: packets per bucket")
    ax.legend()
    return _png(fig)


def beside_the_seed(run: dict[str, Any]) -> list[tuple[str, int, float, float]]:
    """(storage, flows, flowmon's ratio to its bare program, the seed's ratio to its "Native") for
    each zero-loss figure of a storage and flow count the seed measured."""
    found = []
    for f in run["figures"]:
        match = FLOWMON_ZERO_LOSS.match(f["name"])
        if match and f.get("ratio") is not None:
            key = (match["storage"], int(match["flows"]))
            if key in SEED_RATIOS:
                found.append((*key, f["ratio"], SEED_RATIOS[key]))
    return sorted(found)


def seed_rows(run: dict[str, Any]) -> list[list[str]]:
    rows = [["storage", "flows", "flowmon / xdp_pass", "the seed / its Native"]]
    for storage, flows, ours, seed in beside_the_seed(run):
        rows.append([storage, str(flows), f"{ours:.2f}", f"{seed:.2f}"])
    return rows


def seed_plot(run: dict[str, Any]) -> bytes | None:
    found = beside_the_seed(run)
    if not found:
        return None
    fig, ax = plt.subplots(figsize=(8, 0.5 * len(found) + 1.2))
    labels = [f"{storage}, {flows} flow{'s' if flows > 1 else ''}" for storage, flows, *_ in found]
    rows = range(len(found))
    ax.barh([r - 0.2 for r in rows], [f[2] for f in found], height=0.4, label="flowmon")
    ax.barh([r + 0.2 for r in rows], [f[3] for f in found], height=0.4, label="the seed (xflow)")
    ax.set_yticks(list(rows), labels)
    ax.axvline(1.0, color="black", linewidth=0.8)
    ax.invert_yaxis()
    ax.set_xlabel("zero-loss rate as a ratio to no program")
    ax.set_title("flow metrics beside the seed")
    ax.legend(fontsize=7)
    return _png(fig)


def plots(run: dict[str, Any], prefix: str) -> list[Plot]:
    made: list[Plot] = []

    def add(title: str, png: bytes | None) -> None:
        if png is not None:
            made.append(Plot(title, png, f"{prefix}{_slug(title)}.png"))

    add("ratios to the same-run baselines", ratio_plot(run))
    units = {f["name"].split()[0]: f["unit"] for f in run["figures"]}
    for plane, series in sorted(flow_series(run).items()):
        add(f"{plane} throughput against flow count", flows_plot(plane, series, units[plane]))
    add("flow metrics beside the seed", seed_plot(run))
    for f in run["figures"]:
        if "latencies_us" in f.get("extra", {}):
            add(f"{f['name']} CDF", latency_plot(f))
        if "buckets" in f.get("extra", {}):
            add(f"{f['name']} buckets", buckets_plot(f))
    return made


def _budget(f: dict[str, Any]) -> str:
    if f.get("budget") is None:
        return "none"
    return f"{f['budget']}: {'met' if f['budget_met'] else 'MISSED'}"


def figure_rows(run: dict[str, Any]) -> list[list[str]]:
    rows = [["figure", "median", "baseline", "ratio", "budget"]]
    for f in run["figures"]:
        rows.append(
            [
                f["name"],
                f"{f['subject']['median']:.4g} {f['unit']}",
                f"{f['baseline_name']}: {f['baseline']['median']:.4g}",
                f"{f['ratio']:.3g}" if f.get("ratio") is not None else "-",
                _budget(f),
            ]
        )
    return rows


def preflight_rows(run: dict[str, Any]) -> list[list[str]]:
    rows = [["interface", "check", "status", "detail"]]
    for ifname, record in sorted(run["fingerprint"].get("preflight", {}).items()):
        for check in record.get("checks", []):
            detail = check["detail"] + (f" (fix: {check['fix']})" if check.get("fix") else "")
            rows.append([ifname, check["name"], check["status"], detail])
    return rows


def machine_line(run: dict[str, Any]) -> str:
    fp = run["fingerprint"]
    return (
        f"testbed {run['testbed']}, {run['time']}, revision {run.get('git_revision') or 'unknown'}; "
        f"{fp.get('cpu_model')}, {fp.get('cores')} cores, {fp.get('virtualization')}, "
        f"kernel {fp.get('kernel')}"
    )


@dataclass
class Section:
    source: Path
    run: dict[str, Any]
    plots: list[Plot]
    verdicts: list[gate.Verdict] | None


def _markdown_table(rows: list[list[str]]) -> str:
    def cells(row: list[str]) -> str:
        return "| " + " | ".join(c.replace("|", "\\|") for c in row) + " |"

    return "\n".join([cells(rows[0]), "|" + "---|" * len(rows[0]), *map(cells, rows[1:])])


def _html_table(rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in rows[0])
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows[1:]
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def markdown(sections: list[Section]) -> str:
    out = ["# Benchmark report", ""]
    for s in sections:
        out += [
            f"## {s.source.name}",
            "",
            machine_line(s.run),
            "",
            _markdown_table(figure_rows(s.run)),
        ]
        if len(seed_rows(s.run)) > 1:
            out += ["", "### Flow metrics beside the seed", "", _markdown_table(seed_rows(s.run))]
        out += [""] + [f"![{p.title}]({p.file})\n" for p in s.plots]
        if s.verdicts is not None:
            out += ["### Gate against the history", "", _markdown_table(gate.rows(s.verdicts)), ""]
        if len(preflight_rows(s.run)) > 1:
            out += ["### Preflight", "", _markdown_table(preflight_rows(s.run)), ""]
    return "\n".join(out) + "\n"


STYLE = """
body { font-family: sans-serif; margin: 2em; max-width: 80em; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.85em; }
th, td { border: 1px solid #ccc; padding: 0.2em 0.5em; text-align: left; }
img { max-width: 100%; display: block; margin: 1em 0; }
"""
# Counts the plots the browser decoded: a broken or empty image has no natural width.
RENDERED = """
window.addEventListener("load", () => {
  const images = Array.from(document.images);
  const rendered = images.filter((img) => img.complete && img.naturalWidth > 0).length;
  document.body.dataset.plotsRendered = `${rendered}/${images.length}`;
});
"""


def page(sections: list[Section]) -> str:
    parts = []
    for s in sections:
        parts.append(
            f"<h2>{html.escape(s.source.name)}</h2><p>{html.escape(machine_line(s.run))}</p>"
        )
        parts.append(_html_table(figure_rows(s.run)))
        if len(seed_rows(s.run)) > 1:
            parts.append("<h3>Flow metrics beside the seed</h3>" + _html_table(seed_rows(s.run)))
        for p in s.plots:
            data = base64.b64encode(p.png).decode()
            parts.append(
                f'<figure><img alt="{html.escape(p.title)}" src="data:image/png;base64,{data}">'
                f"<figcaption>{html.escape(p.title)}</figcaption></figure>"
            )
        if s.verdicts is not None:
            parts.append("<h3>Gate against the history</h3>" + _html_table(gate.rows(s.verdicts)))
        if len(preflight_rows(s.run)) > 1:
            parts.append("<h3>Preflight</h3>" + _html_table(preflight_rows(s.run)))
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        f"<title>Benchmark report</title><style>{STYLE}</style></head>"
        f'<body data-plots-rendered="pending"><h1>Benchmark report</h1>{"".join(parts)}'
        f"<script>{RENDERED}</script></body></html>\n"
    )


def build(results: list[Path], out: Path, history: Path | None = None) -> tuple[Path, Path]:
    """Write ``out/report.md`` (with its PNGs) and ``out/report.html`` from ``results`` files;
    with ``history``, each run's gate table against it. Returns the two paths."""
    sections = []
    for i, path in enumerate(results):
        run = results_file.read(path)
        verdicts = None
        if history is not None:
            verdicts = gate.gate(run, gate.load_history(gate.history_dir(history, run)))
        sections.append(Section(path, run, plots(run, f"{i}-"), verdicts))
    out.mkdir(parents=True, exist_ok=True)
    for s in sections:
        for p in s.plots:
            (out / p.file).write_bytes(p.png)
    md, page_path = out / "report.md", out / "report.html"
    md.write_text(markdown(sections))
    page_path.write_text(page(sections))
    return md, page_path
