"""One self-contained HTML page: no request leaves it, so it opens from disk, from a mail,
and inside MLflow's artifact viewer.

Plotly's JavaScript is inlined once in the head and every figure refers to it; the sortable
tables are itables (DataTables) with its offline bundle, also inlined once. The only
hand-written script rewrites MLflow links when the page runs inside MLflow's artifact
viewer (see :data:`_LINK_SCRIPT`).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import html
from typing import Any

import plotly.graph_objects as go

_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 0 auto;
       max-width: 1280px; padding: 0 24px 48px; color: #222; }
h1 { font-size: 1.6em; margin: 24px 0 4px; } h2 { font-size: 1.2em; margin: 32px 0 4px; }
.lead { color: #555; margin: 0 0 8px; } .note { color: #666; font-size: 0.9em; margin: 4px 0 8px; }
.summary td { padding: 2px 12px 2px 0; vertical-align: top; } .summary td:first-child { color: #666; }
section { border-top: 1px solid #eee; } img.overlays { max-width: 100%; }
#mlflow-viewer-note { display: none; background: #fff8e1; padding: 6px 10px; border-radius: 4px; }
"""

# Inside MLflow's artifact viewer the page is a blob: URL in an iframe sandboxed with only
# allow-scripts: pop-ups and top navigation are blocked, so no click can open a run. The
# links are then pointed at the MLflow server the page came from (the blob URL's origin),
# for "Open link in new tab", and a note says so. Elsewhere the links stay as written.
# Rewritten when a link is pointed at or focused, not once at load: DataTables creates
# the table's rows after this script has run.
_LINK_SCRIPT = """
<script>
(function () {
  if (location.protocol !== "blob:") return;
  var origin = new URL(location.href.slice(5)).origin;
  function point(event) {
    var a = event.target.closest && event.target.closest("a[data-mlflow-path]");
    if (a) a.href = origin + "/" + a.getAttribute("data-mlflow-path");
  }
  ["mouseover", "focusin", "contextmenu"].forEach(function (name) {
    document.addEventListener(name, point, true);
  });
  var note = document.getElementById("mlflow-viewer-note");
  if (note) note.style.display = "block";
})();
</script>
"""


@dataclasses.dataclass
class Section:
    """A titled part of the page: ``body`` is trusted HTML built by this package."""

    title: str
    body: str
    note: str = ""
    anchor: str = ""


def run_link(ui_base: str, experiment_id: str, run_id: str, text: str) -> str:
    """An HTML link to an MLflow run page, rewritable inside MLflow's own viewer."""
    path = f"#/experiments/{experiment_id}/runs/{run_id}"
    return (f'<a href="{html.escape(ui_base.rstrip("/"))}/{path}" data-mlflow-path="{path}" target="_blank" '
            f'rel="noopener">{html.escape(text)}</a>')


def figure_html(fig: go.Figure | None, div_id: str) -> str:
    """A figure as a ``<div>`` using the page's one copy of plotly.js."""
    if fig is None:
        return ""
    return fig.to_html(full_html=False, include_plotlyjs=False, div_id=div_id,
                       config={"displaylogo": False, "responsive": True})


def table_html(frame: Any, *, table_id: str, order: list[list[Any]] | None = None) -> str:
    """A sortable, searchable table of a DataFrame (itables / DataTables, offline).

    Cells are rendered as HTML (for the links): the caller escapes text cells. ``order`` is DataTables' initial sort, e.g. ``[[3, "desc"]]``.
    """
    from itables import to_html_datatable

    return to_html_datatable(frame, table_id=table_id, connected=False, allow_html=True, showIndex=False,
                             order=order or [], paging=len(frame) > 25, pageLength=25,
                             classes="display compact nowrap cell-border", scrollX=True,
                             text_in_header_can_be_selected=False, layout={"topEnd": "search"},
                             maxBytes=0)


def render_page(title: str, header: str, sections: list[Section]) -> str:
    """The whole HTML document with the head's scripts and styles inlined once."""
    import itables
    from itables.javascript import generate_init_offline_itables_html
    from plotly.offline import get_plotlyjs

    parts = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{html.escape(title)}</title>",
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<style>{_CSS}</style>",
        f'<script type="text/javascript">{get_plotlyjs()}</script>',
        generate_init_offline_itables_html(itables.options.dt_bundle),
        "</head><body>", header,
    ]
    for section in sections:
        anchor = f' id="{section.anchor}"' if section.anchor else ""
        note = f'<p class="note">{section.note}</p>' if section.note else ""
        parts.append(f"<section{anchor}><h2>{html.escape(section.title)}</h2>{note}{section.body}</section>")
    stamp = dt.datetime.now().astimezone().isoformat(timespec="seconds")
    parts += [f'<p class="note">Written by hpsearch on {stamp}.</p>', _LINK_SCRIPT, "</body></html>"]
    return "\n".join(parts)


def png_img(png: bytes, alt: str) -> str:
    """An ``<img>`` with the PNG inlined as a data URI."""
    import base64

    return f'<img class="overlays" alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode()}">'
