"""The report of a run: ``results.json``, ``report.md`` and a self-contained ``report.html``.

The HTML report embeds every figure as a base64 PNG data URI (it can be mailed
or archived alone) and links the PDF next to each PNG. A table of contents
opens the page; each experiment is a collapsible section (``<details>``, open
when one of its checks fails) with the figures, the checks as a table
(expected, measured, tolerance, pass/fail), the summary, the configuration and
timings; provenance closes the page.
"""

from __future__ import annotations

import base64
import html
import json
import os
import re
from pathlib import Path
from typing import Any

from ..model import io
from .runner import ExperimentRun

__all__ = ["CSS", "fmt", "markdown_html", "render_html", "render_markdown", "SCRIPT", "seconds", "summary_table", "write_report"]

CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222;line-height:1.45}
h1{font-size:1.6em}h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:2em}
table{border-collapse:collapse;margin:.8em 0;font-size:.92em}
th,td{border:1px solid #ccc;padding:.25em .6em;text-align:left;vertical-align:top}
th{background:#f3f3f3}td.num{font-family:ui-monospace,monospace;text-align:right}
.pass{color:#176b2c;font-weight:600}.fail{color:#b3261e;font-weight:600}
tr.fail-row{background:#fdecea}
figure{margin:1em 0}figure img{max-width:100%;border:1px solid #eee}
figcaption{font-size:.85em;color:#555}
pre{background:#f7f7f7;padding:.6em;overflow-x:auto;font-size:.85em}
.badge{display:inline-block;padding:.1em .6em;border-radius:.3em;color:#fff}
.badge.pass{background:#176b2c}.badge.fail{background:#b3261e}
.error{background:#fdecea;border-left:4px solid #b3261e;padding:.5em}
nav.toc{background:#f7f7f7;padding:.4em 1em;margin:1em 0}nav.toc h2{margin-top:.4em}nav.toc ol{margin:.3em 0;padding-left:1.6em}
nav.toc li{margin:.15em 0}nav.toc .desc{color:#555;font-size:.9em}
details.experiment{border-top:1px solid #ccc;margin-top:1.2em}
details.experiment>summary{cursor:pointer;list-style-position:outside;margin-left:1.2em}
details.experiment>summary h2{display:inline-block;border:none;margin:.6em 0 .3em}
button{font:inherit;font-size:.85em;margin-right:.4em}
"""

# Following a link to a closed section opens it; the two buttons open or close all of them.
SCRIPT = """
function openTarget(){var t=location.hash&&document.getElementById(location.hash.slice(1));
if(t&&t.tagName==="DETAILS"){t.open=true;t.scrollIntoView();}}
function setAll(open){document.querySelectorAll("details.experiment").forEach(function(d){d.open=open;});}
window.addEventListener("hashchange",openTarget);window.addEventListener("load",openTarget);
"""


def fmt(value: Any) -> str:
    """A check value as short text: floats to 6 significant digits, lists as compact JSON."""
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, (list, tuple, dict)):
        text = json.dumps(value, separators=(",", ":"), default=str)
        return text if len(text) <= 120 else text[:117] + "..."
    return str(value)


def seconds(value: float) -> str:
    return f"{value:.1f} s" if value < 120 else f"{value / 60:.1f} min"


_INLINE = [
    (re.compile(r"`([^`]+)`"), r"<code>\1</code>"),
    (re.compile(r"\*\*([^*]+)\*\*"), r"<strong>\1</strong>"),
    (re.compile(r"(?<![*\w])\*([^*\s][^*]*)\*(?![*\w])"), r"<em>\1</em>"),
    (re.compile(r"\[([^\]]+)\]\(([^)\s]+)\)"), r'<a href="\2">\1</a>'),
]


def markdown_html(text: str) -> str:
    """The small Markdown subset of experiment summaries as HTML.

    Paragraphs, pipe tables, ``-``/``*`` bullet lists, inline code, bold, italics and links;
    everything else (TeX included) is shown as escaped text.
    """
    blocks = []
    for block in re.split(r"\n\s*\n", text.strip()):
        lines = block.splitlines()
        items = [re.match(r"\s*[-*]\s+(.*)", ln) for ln in lines]
        if _is_table(lines):
            blocks.append(_table(lines))
        elif lines and all(items):
            blocks.append("<ul>" + "".join(f"<li>{_inline(m.group(1))}</li>" for m in items if m) + "</ul>")
        elif block.strip():
            blocks.append(f"<p>{_inline(' '.join(ln.strip() for ln in lines))}</p>")
    return "\n".join(blocks)


def _row(line: str) -> list[str]:
    return [c.strip() for c in re.split(r"(?<!\\)\|", line.strip().strip("|"))]


def _is_table(lines: list[str]) -> bool:
    return len(lines) >= 2 and all(ln.strip().startswith("|") for ln in lines) and bool(re.fullmatch(r"[\s|:-]+", lines[1]))


def _table(lines: list[str]) -> str:
    head = "".join(f"<th>{_inline(c)}</th>" for c in _row(lines[0]))
    body = "".join("<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in _row(ln)) + "</tr>" for ln in lines[2:])
    return f'<table class="summary-table"><tr>{head}</tr>{body}</table>'


def _inline(text: str) -> str:
    text = html.escape(text, quote=False)
    for pattern, repl in _INLINE:
        text = pattern.sub(repl, text)
    return text


def _status(passed: bool) -> str:
    return '<span class="pass">PASS</span>' if passed else '<span class="fail">FAIL</span>'


def _anchor(name: str) -> str:
    return "exp-" + re.sub(r"[^A-Za-z0-9_-]", "-", name)


def _img(path: Path, root: Path) -> str:
    rel = os.path.relpath(path, root)
    pdf = path.with_suffix(".pdf")
    links = [f'<a href="{html.escape(rel)}">PNG</a>']
    if pdf.is_file():
        links.append(f'<a href="{html.escape(os.path.relpath(pdf, root))}">PDF</a>')
    if not path.is_file():
        return f'<p class="error">figure missing: {html.escape(rel)}</p>'
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return (
        f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(path.stem)}">'
        f"<figcaption>{html.escape(path.stem)} — {' · '.join(links)}</figcaption></figure>"
    )


def _checks_html(run: ExperimentRun) -> str:
    if not run.checks:
        return "<p>No checks.</p>"
    rows = []
    for c in run.checks:
        cls = "" if c.passed else ' class="fail-row"'
        rows.append(
            f"<tr{cls}><td>{html.escape(c.name)}</td><td class='num'>{html.escape(fmt(c.expected))}</td>"
            f"<td class='num'>{html.escape(fmt(c.measured))}</td><td class='num'>{html.escape(fmt(c.tolerance))}</td>"
            f"<td>{_status(c.passed)}</td><td>{html.escape(c.detail)}</td></tr>"
        )
    head = "<tr><th>check</th><th>expected</th><th>measured</th><th>tolerance</th><th>result</th><th>detail</th></tr>"
    return f'<table class="checks" data-experiment="{html.escape(run.name)}">{head}{"".join(rows)}</table>'


def _experiment_html(run: ExperimentRun, root: Path) -> str:
    t = run.timings()
    parts = [f"<p>{html.escape(run.experiment.description)}</p>"]
    if run.error:
        parts.append(f'<p class="error">{html.escape(run.error)}</p>')
    if run.result is not None and run.result.summary:
        parts.append(markdown_html(run.result.summary))
    parts += [_img(p, root) for p in run.files("figures")]
    parts.append(_checks_html(run))
    data = run.files("data")
    if data:
        links = ", ".join(f'<a href="{html.escape(os.path.relpath(p, root))}">{html.escape(p.name)}</a>' for p in data)
        parts.append(f"<p>Data: {links}</p>")
    parts.append(
        f"<p>Cells: {t['cells']} ({t['computed']} computed, {t['cached']} from cache, {t['failed']} failed); "
        f"compute {seconds(t['compute_seconds'])}, finalize {seconds(t['finalize_seconds'])}"
        f"{' (from cache)' if t['finalize_cached'] else ''}.</p>"
    )
    config = html.escape(io.to_json(run.config))
    parts.append(f"<details><summary>Configuration ({run.size}, version {html.escape(run.experiment.version)})</summary><pre>{config}</pre></details>")
    opened = "" if run.passed else " open"
    head = f"<summary><h2>{html.escape(run.name)} {_status(run.passed)}</h2></summary>"
    return f'<details class="experiment" id="{_anchor(run.name)}"{opened}>{head}\n' + "\n".join(parts) + "\n</details>"


def _toc_html(runs: list[ExperimentRun]) -> str:
    """The table of contents: each experiment (linked, with its verdict and description), then provenance."""
    items = "".join(
        f'<li><a href="#{_anchor(r.name)}">{html.escape(r.name)}</a> {_status(r.passed)} '
        f'<span class="desc">{html.escape(r.experiment.description)}</span></li>'
        for r in runs
    )
    buttons = '<button type="button" onclick="setAll(true)">expand all</button><button type="button" onclick="setAll(false)">collapse all</button>'
    return f'<nav class="toc"><h2>Contents</h2><ol>{items}<li><a href="#provenance">Provenance</a></li></ol>{buttons}</nav>'


def _summary_rows(runs: list[ExperimentRun]) -> list[tuple[str, bool, str, str, str]]:
    rows = []
    for r in runs:
        t = r.timings()
        passed = sum(c.passed for c in r.checks)
        rows.append((r.name, r.passed, f"{passed}/{len(r.checks)}", f"{t['computed']}/{t['cached']}", seconds(t["compute_seconds"] + t["finalize_seconds"])))
    return rows


def _provenance_html(prov: dict[str, Any]) -> str:
    rows = "".join(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(fmt(v))}</td></tr>" for k, v in _flatten(prov).items())
    return f'<h2 id="provenance">Provenance</h2><table class="provenance">{rows}</table>'


def _flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in data.items():
        if isinstance(v, dict) and v:
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def render_html(runs: list[ExperimentRun], prov: dict[str, Any], root: Path, title: str = "nearopt reproduction report") -> str:
    """The whole report as one HTML document (figures embedded)."""
    ok = all(r.passed for r in runs)
    badge = f'<span class="badge {"pass" if ok else "fail"}">{"all checks pass" if ok else "some checks fail"}</span>'
    summary = "".join(
        f'<tr><td><a href="#{_anchor(n)}">{html.escape(n)}</a></td><td>{_status(p)}</td><td class="num">{c}</td><td class="num">{cells}</td><td class="num">{t}</td></tr>'
        for n, p, c, cells, t in _summary_rows(runs)
    )
    body = "\n".join(_experiment_html(r, root) for r in runs)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>{html.escape(title)}</title><style>{CSS}</style><script>{SCRIPT}</script></head>
<body>
<h1>{html.escape(title)}</h1>
<p>{badge} — size <code>{html.escape(str(prov.get("size", "")))}</code>, finished {html.escape(str(prov.get("finished", "")))}</p>
<table class="summary"><tr><th>experiment</th><th>result</th><th>checks passed</th><th>cells computed/cached</th><th>time</th></tr>{summary}</table>
{_toc_html(runs)}
{body}
{_provenance_html(prov)}
</body></html>
"""


def _md_cell(value: Any) -> str:
    return fmt(value).replace("|", "\\|").replace("\n", " ")


def _md_anchor(run: ExperimentRun) -> str:
    """The anchor a Markdown renderer gives the heading ``## name — PASS``: lower case, punctuation dropped."""
    heading = f"{run.name} — {'PASS' if run.passed else 'FAIL'}"
    return re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")


def render_markdown(runs: list[ExperimentRun], prov: dict[str, Any], root: Path, title: str = "nearopt reproduction report") -> str:
    """The report as Markdown, with figures linked (not embedded)."""
    ok = all(r.passed for r in runs)
    lines = [f"# {title}", "", f"**{'All checks pass' if ok else 'Some checks fail'}** — size `{prov.get('size', '')}`, finished {prov.get('finished', '')}", ""]
    lines += ["| experiment | result | checks passed | cells computed/cached | time |", "|---|---|---|---|---|"]
    lines += [f"| {n} | {'PASS' if p else 'FAIL'} | {c} | {cells} | {t} |" for n, p, c, cells, t in _summary_rows(runs)]
    lines += ["", "Contents:", ""] + [f"{i}. [{r.name}](#{_md_anchor(r)}) — {r.experiment.description}" for i, r in enumerate(runs, 1)]
    for r in runs:
        lines += ["", f"## {r.name} — {'PASS' if r.passed else 'FAIL'}", "", r.experiment.description, ""]
        if r.error:
            lines += [f"> **Error:** {r.error}", ""]
        if r.result is not None and r.result.summary:
            lines += [r.result.summary.strip(), ""]
        for p in r.files("figures"):
            rel = os.path.relpath(p, root)
            lines += [f"![{p.stem}]({rel}) ([PDF]({os.path.relpath(p.with_suffix('.pdf'), root)}))", ""]
        if r.checks:
            lines += ["| check | expected | measured | tolerance | result | detail |", "|---|---|---|---|---|---|"]
            lines += [
                f"| {_md_cell(c.name)} | {_md_cell(c.expected)} | {_md_cell(c.measured)} | {_md_cell(c.tolerance)} | {'pass' if c.passed else '**FAIL**'} | {_md_cell(c.detail)} |"
                for c in r.checks
            ]
            lines.append("")
        data = r.files("data")
        if data:
            lines += ["Data: " + ", ".join(f"[{p.name}]({os.path.relpath(p, root)})" for p in data), ""]
        lines += ["<details><summary>Configuration</summary>", "", "```json", io.to_json(r.config), "```", "", "</details>"]
    lines += ["", "## Provenance", "", "| | |", "|---|---|"]
    lines += [f"| {k} | {_md_cell(v)} |" for k, v in _flatten(prov).items()]
    return "\n".join(lines) + "\n"


def write_report(runs: list[ExperimentRun], prov: dict[str, Any], root: str | Path, title: str = "nearopt reproduction report") -> dict[str, Path]:
    """Write ``results.json``, ``report.md`` and ``report.html`` under ``root``; return their paths."""
    root = Path(root)
    results = {
        "passed": all(r.passed for r in runs),
        "provenance": prov,
        "experiments": [r.to_dict(root) for r in runs],
    }
    return {
        "results": io.write_json(root / "results.json", results),
        "markdown": io.write_text(root / "report.md", render_markdown(runs, prov, root, title)),
        "html": io.write_text(root / "report.html", render_html(runs, prov, root, title)),
    }


def summary_table(runs: list[ExperimentRun]) -> str:
    """The compact plain-text table printed at the end of a run."""
    rows = [("experiment", "result", "checks", "cells new/cached", "time")]
    rows += [(n, "PASS" if p else "FAIL", c, cells, t) for n, p, c, cells, t in _summary_rows(runs)]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows)
