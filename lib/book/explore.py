"""Explorables: a live ipywidgets control in Jupyter, a pre-rendered slider in the static book.

``explorable(render, controls)`` takes a function that draws one matplotlib figure for one
setting of the controls, and a small grid of values per control.

* In a live Jupyter kernel it shows ipywidgets sliders over that grid and redraws on change.
* When the book is built (``BOOK_STATIC=1``, set by ``make book`` and ``make test``) it renders
  every grid point once and emits self-contained HTML: range sliders that swap pre-rendered PNG
  frames with a few lines of inline JavaScript. It needs no kernel and no CDN, and without
  JavaScript the page still shows the initial frame. No widget is displayed, so the static book
  never shows a dead control.
"""

from __future__ import annotations

import base64
import hashlib
import html
import io
import itertools
import json
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import matplotlib.pyplot as plt
from matplotlib.figure import Figure

#: Static pages stay light: the issue budget is about 3 MB a page, explorables take at most this.
MAX_STATIC_BYTES = 2_500_000
MAX_FRAMES = 64


def static_mode() -> bool:
    """True while the book is being built: explorables pre-render instead of going live."""
    return os.environ.get("BOOK_STATIC", "0") not in ("", "0", "false", "False")


def _validate(controls: Mapping[str, Sequence[Any]], initial: Mapping[str, Any] | None) -> dict:
    if not controls:
        raise ValueError("an explorable needs at least one control")
    start = {}
    for name, values in controls.items():
        values = list(values)
        if len(values) < 2:
            raise ValueError(f"control {name!r} needs at least two values, got {values}")
        if len(set(map(repr, values))) != len(values):
            raise ValueError(f"control {name!r} has repeated values: {values}")
        start[name] = values[0]
    for name, value in (initial or {}).items():
        if name not in controls:
            raise ValueError(f"initial value for unknown control {name!r}; known: {list(controls)}")
        if value not in list(controls[name]):
            raise ValueError(f"initial {name}={value!r} is not on its grid {list(controls[name])}")
        start[name] = value
    n_frames = 1
    for values in controls.values():
        n_frames *= len(values)
    if n_frames > MAX_FRAMES:
        raise ValueError(f"{n_frames} frames is too many for a static page (at most {MAX_FRAMES})")
    return start


def _label(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _png(fig: Figure, dpi: int) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    plt.close(fig)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _live_controls(controls: Mapping[str, Sequence[Any]], start: Mapping[str, Any]) -> dict:
    import ipywidgets as widgets

    return {
        name: widgets.SelectionSlider(
            options=[(_label(v), v) for v in values],
            value=start[name],
            description=name,
            continuous_update=False,
        )
        for name, values in controls.items()
    }


def static_explorable_html(
    render: Callable[..., Figure],
    controls: Mapping[str, Sequence[Any]],
    *,
    initial: Mapping[str, Any] | None = None,
    caption: str = "",
    dpi: int = 80,
) -> str:
    """Render every grid point and return the self-contained slider HTML."""
    start = _validate(controls, initial)
    names = list(controls)
    grids = [list(controls[n]) for n in names]
    frames = []
    for combo in progress(list(itertools.product(*grids)), desc="pre-rendering frames"):
        fig = render(**dict(zip(names, combo)))
        if not isinstance(fig, Figure):
            raise TypeError(f"render must return a matplotlib Figure, got {type(fig)}")
        frames.append(_png(fig, dpi))
    size = sum(len(f) for f in frames)
    if size > MAX_STATIC_BYTES:
        raise ValueError(
            f"explorable frames take {size / 1e6:.1f} MB (limit {MAX_STATIC_BYTES / 1e6:.1f} MB): "
            "use fewer grid values or a lower dpi"
        )
    start_index = [grids[a].index(start[n]) for a, n in enumerate(names)]
    flat = 0
    for a, i in enumerate(start_index):
        flat = flat * len(grids[a]) + i
    uid = "explorable-" + hashlib.sha1("".join(frames).encode()).hexdigest()[:10]
    sliders = "\n".join(
        f'<label style="margin-right:1.5em">{html.escape(n)} '
        f'<input type="range" min="0" max="{len(g) - 1}" step="1" value="{i}" '
        f'aria-label="{html.escape(n)}"> <output>{html.escape(_label(g[i]))}</output></label>'
        for n, g, i in zip(names, grids, start_index)
    )
    labels = [[_label(v) for v in g] for g in grids]
    caption_html = f"<p><em>{html.escape(caption)}</em></p>" if caption else ""
    return f"""<div class="book-explorable" id="{uid}">
<div class="book-explorable-controls">{sliders}</div>
<img alt="{html.escape(caption or 'explorable figure')}" style="max-width:100%"
 src="data:image/png;base64,{frames[flat]}">
{caption_html}</div>
<script>
(function () {{
  const root = document.getElementById("{uid}");
  const frames = {json.dumps(frames)};
  const labels = {json.dumps(labels)};
  const inputs = root.querySelectorAll("input[type=range]");
  function update() {{
    let index = 0;
    inputs.forEach(function (input, axis) {{
      index = index * labels[axis].length + Number(input.value);
      input.nextElementSibling.textContent = labels[axis][Number(input.value)];
    }});
    root.querySelector("img").src = "data:image/png;base64," + frames[index];
  }}
  inputs.forEach(function (input) {{ input.addEventListener("input", update); }});
}})();
</script>"""


def explorable(
    render: Callable[..., Figure],
    controls: Mapping[str, Sequence[Any]],
    *,
    initial: Mapping[str, Any] | None = None,
    caption: str = "",
    dpi: int = 80,
) -> None:
    """Show an explorable: live sliders in Jupyter, pre-rendered sliders in the static book.

    ``render(**values)`` draws and returns one matplotlib figure; ``controls`` maps each
    control's name to its grid of values (at most 64 frames in all); ``initial`` picks the
    starting frame (the one a reader without JavaScript sees).
    """
    from IPython.display import HTML, display

    start = _validate(controls, initial)
    sliders = _live_controls(controls, start)  # built in both modes, so both stay tested
    if static_mode():
        html_text = static_explorable_html(
            render, controls, initial=initial, caption=caption, dpi=dpi
        )
        display(HTML(html_text))
        return

    import ipywidgets as widgets

    output = widgets.Output()

    def redraw(_change: object = None) -> None:
        with output:
            output.clear_output(wait=True)
            fig = render(**{name: s.value for name, s in sliders.items()})
            display(fig)
            plt.close(fig)

    for slider in sliders.values():
        slider.observe(redraw, names="value")
    redraw()
    box = [widgets.HBox(list(sliders.values())), output]
    if caption:
        box.append(widgets.HTML(f"<em>{html.escape(caption)}</em>"))
    display(widgets.VBox(box))


def progress(iterable: Iterable, **kwargs: Any) -> Iterable:
    """A ``tqdm.auto`` progress bar for loops over about 5 s: a widget in Jupyter, a text bar
    in a terminal, and nothing while the book is built (a bar is no content for a page)."""
    from tqdm.auto import tqdm

    return tqdm(iterable, disable=static_mode(), **kwargs)
