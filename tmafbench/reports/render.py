"""Build a report folder from the database: index.md, index.html, figures, tables.

`build_report` is the library function behind `tmafbench report build`. It reads only the
database (read-only engine) and never trains. index.html links the PNG figures beside it (a folder
to commit or serve); `self_contained` embeds them instead (one file to mail).
"""

from __future__ import annotations

import base64
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd

from tmafbench.core import RunStatus
from tmafbench.errors import TmafbenchError
from tmafbench.reports import frames, stats, tables, tuning
from tmafbench.reports.figures import IMAGE_FORMATS, Figure, FigureContext, draw_all
from tmafbench.reports.labels import metric_label, slug
from tmafbench.reports.plotting import Palette
from tmafbench.reports.section import Section
from tmafbench.reports.tables import Table

DOC_FORMATS = ("md", "html", "tex", "csv")
ALL_FORMATS = DOC_FORMATS + IMAGE_FORMATS
DEFAULT_FORMATS = ("md", "html", "tex", "csv", "png")


@dataclass
class Report:
    """What `build_report` wrote, with the numbers behind it."""

    folder: Path
    studies: list[str]
    sections: list[Section] = field(default_factory=list)
    files: list[Path] = field(default_factory=list)
    seconds: float = 0.0
    tuning: Section | None = None  # a tuned study's tuning history and chosen settings (reports/tuning.py)
    commentary: str = ""  # the analyst's notes (--notes), shown verbatim under the header
    training: Table | None = None  # the training settings per task, shown under the header

    @property
    def tables(self) -> list[Table]:
        extra = ([self.training] if self.training else []) + (self.tuning.tables if self.tuning else [])
        return extra + [t for s in self.sections for t in s.tables]

    def summary(self) -> str:
        """What was written, by kind: 'index.md, index.html, 34 table files (17 tables as csv, tex), ...'."""
        documents = [p.name for p in self.files if p.parent == self.folder]
        parts = [", ".join(documents)] if documents else []
        for kind, items in (("table", self.tables), ("figure", self.figures)):
            files = [p for p in self.files if p.parent == self.folder / f"{kind}s"]
            if files:
                formats = ", ".join(dict.fromkeys(p.suffix.lstrip(".") for p in files))
                parts.append(f"{len(files)} {kind} files ({len(items)} {kind}s as {formats})")
            elif kind == "table" and documents and items:  # md/html only: the tables live in the documents
                parts[0] += f" ({len(items)} tables inside)"
        return ", ".join(parts) or "nothing"

    @property
    def figures(self) -> list[Figure]:
        extra = self.tuning.figures if self.tuning else []
        return extra + [f for s in self.sections for f in s.figures]

    @property
    def notes(self) -> list[str]:
        several = len(self.sections) > 1
        return [f"{s.task}: {n}" if several else n for s in self.sections for n in s.notes]


def parse_formats(text: str | None) -> tuple[str, ...]:
    """'md,html' -> ('md', 'html', 'png'): md and html need PNG figures, so PNG is added."""
    if not text:
        return DEFAULT_FORMATS
    items = tuple(dict.fromkeys(f.strip().lower() for f in text.split(",") if f.strip()))
    unknown = [f for f in items if f not in ALL_FORMATS]
    if unknown or not items:
        raise ValueError(f"unknown format {', '.join(unknown) or repr(text)}; choose from: {', '.join(ALL_FORMATS)}")
    if ({"md", "html"} & set(items)) and "png" not in items:
        items += ("png",)
    return items


def default_folder(studies: list[str]) -> Path:
    return Path("reports") / "+".join(studies)


def build_report(
    storage: str,
    studies: list[str],
    *,
    out: Path | None = None,
    baseline: str | None = None,
    formats: tuple[str, ...] = DEFAULT_FORMATS,
    metric: str | None = None,
    figure_scale: float = 1.0,
    notes: Path | None = None,
    self_contained: bool = False,
) -> Report:
    """Read `studies` from `storage` and write the report into `out` (default reports/<names>).

    `notes` names a Markdown file of the analyst's own words (how the numbers compare with a paper,
    what was tried); it is copied under the header as written, and is the only text in the report
    that did not come from the database. `self_contained` embeds the figures in index.html instead
    of linking the PNG files beside it.
    """
    start = time.perf_counter()
    commentary = read_notes(notes) if notes is not None else ""
    engine = frames.open_readonly(storage)
    try:
        data = frames.load(engine, list(studies))
        report = _build(data, studies, out or default_folder(studies), baseline, formats, metric, figure_scale,
                        commentary, self_contained)
    finally:
        engine.dispose()
    report.seconds = time.perf_counter() - start
    return report


def read_notes(path: Path) -> str:
    """The text of a --notes file, checked before anything is read or written."""
    try:
        text = Path(path).read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        raise TmafbenchError(f"notes file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise TmafbenchError(f"cannot read notes file {path}: {exc}") from None
    if not text:
        raise TmafbenchError(f"notes file {path} is empty")
    return text


def _build(data, studies, folder: Path, baseline, formats, metric, figure_scale, commentary: str = "",
           self_contained: bool = False) -> Report:
    """One section per task (tasks differ in metric and direction), then the documents."""
    baseline = stats.check_baseline(data, baseline)
    report = Report(Path(folder), list(studies), commentary=commentary)
    tasks = data.tasks()
    subsets = [data.subset(task) if len(tasks) > 1 else data for task in tasks]
    # One colour per group in every figure of the report, the tuning history's included.
    palette = Palette(s for sub in subsets for s in sub.cells["series"])
    for task, sub in zip(tasks, subsets):
        prefix = f"{slug(task)}_" if len(tasks) > 1 else ""
        report.sections.append(_section(sub, task, prefix, report.folder, baseline, formats, metric, figure_scale,
                                        palette))
    if all(s.metric is None for s in report.sections):
        raise frames.NothingFinished("no run has finished yet: nothing to report")
    report.training = tables.training_table(data)
    if data.engine is not None:
        report.tuning = tuning.build_section(data.engine, list(studies), report.folder, formats, figure_scale, palette)
    table_formats = {f for f in formats if f in ("csv", "tex")}
    for table in report.tables:
        report.files += table.write(report.folder / "tables", table_formats)
    report.files += [p for fig in report.figures for p in fig.paths.values()]
    if "md" in formats:
        report.files.append(_write(report.folder / "index.md", render_markdown(report, data)))
    if "html" in formats:
        report.files.append(_write(report.folder / "index.html", render_html(report, data, self_contained)))
    _remove_stale(report, table_formats | {f for f in formats if f in IMAGE_FORMATS})
    return report


def _remove_stale(report: Report, formats: set[str]) -> None:
    """The report owns its figures/ and tables/ folders: a file there in a format this build wrote,
    but not written by it (a figure renamed or no longer drawn since the last build), is removed, so
    that a rebuilt folder holds only what its documents show."""
    written = {p.resolve() for p in report.files}
    for sub in ("figures", "tables"):
        folder = report.folder / sub
        if folder.is_dir():
            for path in folder.iterdir():
                if path.is_file() and path.suffix.lstrip(".") in formats and path.resolve() not in written:
                    path.unlink()


def _section(data, task, prefix, folder: Path, baseline, formats, metric, figure_scale, palette: Palette) -> Section:
    if baseline is not None and baseline not in set(data.cells["activation"].astype(str)):
        baseline = None  # the baseline ran on other tasks only
    try:
        metric, direction = frames.primary_metric(data, metric)
    except frames.NothingFinished as exc:  # nothing finished for this task yet: still count its cells
        section = Section(task, prefix, None, None, baseline, notes=[str(exc)])
        section.tables = [tables.failure_table(stats.failure_counts(data))]
        section.tables[0].name = prefix + section.tables[0].name
        return section
    section = Section(task, prefix, metric, direction, baseline)
    summary = stats.group_summary(data, metric, direction)
    section.tables = _tables(data, summary, section)
    for table in section.tables:
        table.name = prefix + table.name
    images = tuple(f for f in formats if f in IMAGE_FORMATS)
    if images:
        ctx = FigureContext(data, metric, direction, baseline, folder / "figures", images, figure_scale, prefix, palette)
        section.figures = draw_all(ctx, summary)
    section.notes += _notes(data, summary, section)
    return section


def _tables(data, summary: pd.DataFrame, report: Section) -> list[Table]:
    metric, direction, baseline = report.metric, report.direction, report.baseline
    out = [tables.summary_table(summary, data, metric, direction)]
    on_train = frames.training_set_metric(data, metric)
    if on_train is not None:  # the runs also measured the training set (evaluate_train): the paper's figures
        train_table = tables.summary_table(stats.group_summary(data, on_train, direction), data, on_train, direction)
        train_table.name = "final_train_metric"
        out.append(train_table)
    wide = tables.wide_table(summary, data, metric, direction)
    if wide is not None:
        out.insert(0, wide)
    if baseline is not None:
        paired = stats.paired_comparison(data, metric, direction, baseline)
        if len(paired):
            out.append(tables.paired_table(paired, data, metric, direction, baseline))
    timing = stats.timing_summary(data, baseline)
    if len(timing):
        spread = stats.timing_spread(data, baseline, timing) if baseline is not None else None
        out.append(tables.timing_table(timing, data, baseline, spread))
    ref = stats.reference_comparison(data, metric, direction)
    if len(ref):
        out.append(tables.reference_table(ref, direction))
    out.append(tables.failure_table(stats.failure_counts(data)))
    return out


def _notes(data, summary: pd.DataFrame, report: Section) -> list[str]:
    notes = []
    cells = data.cells
    unfinished = cells[cells["status"] != RunStatus.COMPLETED]
    if len(unfinished):
        counts = unfinished["status"].value_counts()
        detail = ", ".join(f"{n} {status}" for status, n in counts.items())
        notes.append(f"Incomplete: {len(unfinished)} of {len(cells)} cells have no completed run ({detail}); "
                     f"{(~summary['complete']).sum()} groups are marked {tables.INCOMPLETE_MARK}.")
    if report.baseline is None:
        labels = ", ".join(sorted(cells["activation"].astype(str).unique()))
        notes.append(f"No baseline: 'relu' is not in the study (activations: {labels}); pass --baseline.")
    return notes


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def _header_lines(report: Report, data) -> list[tuple[str, str]]:
    cells = data.cells
    hardware = sorted(h for h in cells["hardware"].dropna().unique())
    metrics = "; ".join(f"{s.task}: {metric_label(s.metric, s.direction)}" if len(report.sections) > 1
                        else metric_label(s.metric, s.direction) for s in report.sections if s.metric)
    baselines = sorted({s.baseline for s in report.sections if s.baseline})
    descriptions = [d for d in data.studies["description"].fillna("") if d]
    return [
        ("Studies", ", ".join(report.studies)),
        *([("Description", " / ".join(descriptions))] if descriptions else []),
        ("Published reference", _reference_line(data)),
        ("Training", "see the table below" if report.training else "not recorded"),
        ("Primary metric", metrics),
        ("Baseline", ", ".join(baselines) or "none"),
        ("Cells", f"{len(cells)} ({(cells['status'] == RunStatus.COMPLETED).sum()} completed) in {cells['group'].nunique()} groups"),
        ("Hardware", "; ".join(hardware) or "unknown"),
        ("Generated", datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC") + " from the database only"),
    ]


def _reference_line(data) -> str:
    """Where the published numbers come from, or plainly that the study file gives none."""
    if not data.references:
        return "none: the study file has no [reference] table, so nothing here is compared with published numbers"
    several = len(data.studies) > 1

    def count(ref: dict) -> str:
        n = len(ref.get("rows", []))
        return f"{n} value" + ("" if n == 1 else "s")

    return "; ".join(f"{study + ': ' if several else ''}{ref.get('source', '?')} ({count(ref)})"
                     for study, ref in data.references.items())


def _blocks(report: Report) -> list[tuple[str, int, object]]:
    """The document as (kind, heading level, content) blocks, shared by Markdown and HTML."""
    several = len(report.sections) > 1
    level = 3 if several or report.tuning is not None else 2
    blocks: list[tuple[str, int, object]] = []
    if report.training is not None:
        blocks += [("heading", 2, report.training.title), ("table", 0, report.training.shown),
                   ("note", 0, report.training.note)]
    if report.tuning is not None:  # how each group's settings were chosen, before the comparison
        blocks.append(("heading", 2, "Tuning"))
        blocks += [("note", 0, n) for n in report.tuning.notes]
        for table in report.tuning.tables:
            blocks += [("heading", 3, table.title), ("table", 0, table.shown), ("note", 0, table.note)]
        for fig in report.tuning.figures:
            blocks += [("heading", 3, fig.title), ("figure", 0, fig)] + ([("note", 0, fig.note)] if fig.note else [])
        blocks.append(("heading", 2, "Comparison on the evaluation seeds"))
    for section in report.sections:
        if several:
            blocks.append(("heading", 2, f"Task: {section.task}"))
            blocks += [("warn", 0, n) for n in section.notes]
        for table in section.tables:
            blocks += [("heading", level, table.title), ("table", 0, table.shown)]
            if table.note:
                blocks.append(("note", 0, table.note))
        if section.figures:
            blocks.append(("heading", level, "Figures"))
        for fig in section.figures:
            blocks += [("heading", level + 1, fig.title), ("figure", 0, fig)] + ([("note", 0, fig.note)] if fig.note else [])
    return blocks


def render_markdown(report: Report, data) -> str:
    """index.md: header, notes, then per task every table and figure (relative PNG links)."""
    lines = [f"# Report: {', '.join(report.studies)}", ""]
    lines += [f"- **{k}:** {v}" for k, v in _header_lines(report, data)] + [""]
    if report.commentary:
        lines += ["## Notes", "", report.commentary, ""]
    if len(report.sections) == 1:
        lines += [f"> {note}" for note in report.notes] + ([""] if report.notes else [])
    for kind, level, content in _blocks(report):
        if kind == "heading":
            lines += ["#" * level + f" {content}", ""]
        elif kind == "table":
            lines += [tables.to_markdown(content), ""]
        elif kind == "note":
            lines += [f"_{content}_", ""]
        elif kind == "warn":
            lines += [f"> {content}", ""]
        else:
            rel = content.paths["png"].relative_to(report.folder).as_posix()
            lines += [f"![{content.title}]({rel})", ""]
    return "\n".join(lines)


def _image_source(figure: Figure, folder: Path, self_contained: bool) -> str:
    """The figure's PNG as a link relative to the report folder, or as a data URL."""
    png = figure.paths["png"]
    if self_contained:
        return "data:image/png;base64," + base64.b64encode(png.read_bytes()).decode("ascii")
    return tables.html_escape(png.relative_to(folder).as_posix())


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}
table.tbl{border-collapse:collapse;margin:.5em 0 .3em;font-size:13px}
table.tbl th,table.tbl td{border-bottom:1px solid #ddd;padding:3px 8px;text-align:right}
table.tbl th{background:#f3f3f3}
table.tbl .text{text-align:left}
.note{color:#555;font-size:12px;font-style:italic}
.warn{background:#fff4e0;border-left:4px solid #e0a030;padding:.4em .8em}
img{max-width:100%;border:1px solid #eee}
.notes{background:#f7f7f7;border-left:4px solid #888;padding:.1em .9em;font-size:14px}
"""


def notes_html(text: str) -> str:
    """The --notes Markdown as HTML (CommonMark via markdown-it-py, which rich already needs).

    Raw HTML in the notes is escaped, not passed through: a notes file cannot inject markup.
    """
    from markdown_it import MarkdownIt

    return MarkdownIt("commonmark", {"html": False}).render(text)


def render_html(report: Report, data, self_contained: bool = False) -> str:
    """index.html with inline CSS; the PNG figures linked beside it (figures/...), or embedded as base64
    when `self_contained`. Either way it opens with no network."""
    esc = tables.html_escape
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>Report: {esc(', '.join(report.studies))}</title><style>{_CSS}</style></head><body>",
        f"<h1>Report: {esc(', '.join(report.studies))}</h1><ul>",
        *[f"<li><b>{esc(k)}:</b> {esc(v)}</li>" for k, v in _header_lines(report, data)],
        "</ul>",
    ]
    if report.commentary:
        parts += ["<h2>Notes</h2>", f'<div class="notes">{notes_html(report.commentary)}</div>']
    if len(report.sections) == 1:
        parts += [f'<p class="warn">{esc(n)}</p>' for n in report.notes]
    for kind, level, content in _blocks(report):
        if kind == "heading":
            parts.append(f"<h{level}>{esc(content)}</h{level}>")
        elif kind == "table":
            parts.append(tables.to_html(content))
        elif kind == "note":
            parts.append(f'<p class="note">{esc(content)}</p>')
        elif kind == "warn":
            parts.append(f'<p class="warn">{esc(content)}</p>')
        else:
            parts.append(f'<img alt="{esc(content.title)}" src="{_image_source(content, report.folder, self_contained)}">')
    parts.append("</body></html>")
    return "\n".join(parts)
