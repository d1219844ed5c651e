"""The chapter machinery: seeds, claim checks, explorables, the paper list and the build."""

import json

import matplotlib.pyplot as plt
import nbformat
import pytest

from lib.book import Chapter, ClaimCheckFailed, book_scale, book_seed, build, compare, load_papers
from lib.book.explore import static_explorable_html
from lib.book.papers import PART_ORDER, part_folder


def test_papers_table_has_36_papers_in_known_parts():
    papers = load_papers()
    assert [p.number for p in papers] == list(range(1, 37))
    assert all(p.part in PART_ORDER for p in papers)
    assert part_folder("Topology & geometry") == "topology-geometry"
    with pytest.raises(ValueError, match="unknown book part"):
        part_folder("Cooking")


def test_seed_and_scale_come_from_the_environment(monkeypatch):
    monkeypatch.setenv("BOOK_SEED", "7")
    assert book_seed() == 7
    monkeypatch.setenv("BOOK_SEED", "seven")
    with pytest.raises(ValueError, match="BOOK_SEED"):
        book_seed()
    monkeypatch.setenv("BOOK_SEED", "-1")
    with pytest.raises(ValueError, match="non-negative"):
        book_seed()
    monkeypatch.setenv("BOOK_SCALE", "huge")
    with pytest.raises(ValueError, match="BOOK_SCALE"):
        book_scale()


def test_compare_needs_exactly_one_comparison():
    assert compare(0.05, at_most=0.1) == (True, "≤ 0.1")
    assert compare(3, between=(1, 2))[0] is False
    assert compare(True, equals=True)[0]
    with pytest.raises(ValueError, match="exactly one"):
        compare(1.0)
    with pytest.raises(ValueError, match="exactly one"):
        compare(1.0, at_most=2, at_least=0)
    with pytest.raises(TypeError, match="number"):
        compare("fast", at_most=1)
    assert compare(float("nan"), at_most=1)[0] is False


def test_claim_checks_are_recorded_and_a_failure_raises(tmp_path, monkeypatch):
    monkeypatch.setenv("BOOK_RESULTS_DIR", str(tmp_path))
    monkeypatch.setenv("BOOK_SEED", "3")
    chapter = Chapter("sinkhorn-newton-sparse")
    assert chapter.seed == 3 and chapter.scale == "mini"
    chapter.check("ratio is small", paper="Table 1", measured=0.04, at_most=0.1)
    with pytest.raises(ClaimCheckFailed, match="ratio is large"):
        chapter.check("ratio is large", paper="Table 1", measured=0.5, at_most=0.1)
    record = json.loads((tmp_path / "sinkhorn-newton-sparse.json").read_text())
    assert [c["passed"] for c in record["claims"]] == [True, False]
    assert set(record["claims"][0]) >= {"claim", "paper", "measured", "passed"}
    with pytest.raises(KeyError, match="no paper with slug"):
        Chapter("no-such-paper")


def test_a_claim_that_does_not_reproduce_is_recorded_without_raising(tmp_path, monkeypatch):
    monkeypatch.setenv("BOOK_RESULTS_DIR", str(tmp_path))
    chapter = Chapter("sinkhorn-newton-sparse")
    chapter.check("holds", paper="Table 1", measured=0.04, at_most=0.1)
    assert chapter.not_reproduced("faster", paper="Fig. 2", measured=1.1, below=1.0) is False
    assert chapter.not_reproduced("fluke", paper="Fig. 3", measured=0.9, below=1.0) is True
    record = json.loads((tmp_path / "sinkhorn-newton-sparse.json").read_text())
    assert [c["kind"] for c in record["claims"]] == ["check", "not reproduced", "not reproduced"]
    assert [c["passed"] for c in record["claims"]] == [True, False, True]
    from lib.book.build import _scoreboard_md
    from lib.book.papers import load_papers

    payload = {"generated_at": "now", "seed": 0}
    chapters = [{"slug": "sinkhorn-newton-sparse", "title": "SNS", "wall_seconds": 1.0,
                 "claims": record["claims"]}]  # fmt: skip
    board = _scoreboard_md(load_papers(), chapters, payload)
    assert "1 of 1 claim checks hold" in board and "2 claim(s)" in board
    assert "| 1 / 1, ⚠️ 2 | none |" in board and "| ⚠️ | faster |" in board
    with pytest.raises(ValueError, match="claim in words"):
        chapter.not_reproduced(" ", paper="x", measured=1, at_most=0)


def test_cross_checks_are_recorded_apart_and_a_disagreement_raises(tmp_path, monkeypatch):
    monkeypatch.setenv("BOOK_RESULTS_DIR", str(tmp_path))
    chapter = Chapter("sinkhorn-newton-sparse")
    chapter.check("holds", paper="Table 1", measured=0.04, at_most=0.1)
    assert chapter.cross_check("plan vs POT", reference="ot.sinkhorn", measured=1e-12,
                               at_most=1e-9)  # fmt: skip
    with pytest.raises(ClaimCheckFailed, match="cross-check failed: 'plan vs brute force'"):
        chapter.cross_check("plan vs brute force", reference="enumeration", measured=0.5,
                            at_most=1e-9)  # fmt: skip
    record = json.loads((tmp_path / "sinkhorn-newton-sparse.json").read_text())
    assert [c["kind"] for c in record["claims"]] == ["check", "cross-check", "cross-check"]
    from lib.book.build import _scoreboard_md
    from lib.book.papers import load_papers

    chapters = [{"slug": "sinkhorn-newton-sparse", "title": "SNS", "wall_seconds": 1.0,
                 "claims": record["claims"]}]  # fmt: skip
    board = _scoreboard_md(load_papers(), chapters, {"generated_at": "now", "seed": 0})
    assert "1 of 1 claim checks hold, 1 of 2 cross-checks agree" in board
    assert "(1 of 1 chapters cross-check" in board and "| 1 / 1 | 🔁 1 / 2 |" in board
    assert "| 🔁 | plan vs POT | ot.sinkhorn |" in board


def test_static_explorable_renders_every_frame_and_starts_where_asked():
    def render(a, b):
        fig, ax = plt.subplots(figsize=(2, 2))
        ax.plot([0, 1], [a, b])
        return fig

    html = static_explorable_html(render, {"a": [0, 1, 2], "b": [0.5, 1.5]}, initial={"a": 1})
    assert html.count('type="range"') == 2
    assert html.count("iVBOR") == 3 * 2 + 1  # every frame in the script, the start one in <img>
    assert 'value="1"' in html
    with pytest.raises(ValueError, match="not on its grid"):
        static_explorable_html(render, {"a": [0, 1]}, initial={"a": 5})
    with pytest.raises(ValueError, match="at least two values"):
        static_explorable_html(render, {"a": [0]})
    with pytest.raises(ValueError, match="too many"):
        static_explorable_html(render, {"a": range(10), "b": range(10)})


def test_paired_notebooks_are_output_free_and_open_with_a_colab_cell():
    for md in build.chapter_sources():
        nb = nbformat.reads(build.chapter_notebook(md), as_version=4)
        assert "google.colab" in nb.cells[0].source
        assert nb.cells[0].metadata["tags"] == ["remove-cell"]
        assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code")


def test_toc_lists_every_chapter_and_the_closing_pages():
    toc = build.toc_text()
    for md in build.chapter_sources():
        assert md.stem in toc
    assert "book/scoreboard" in toc and "book/bibliography" in toc


def test_bibliography_keys_are_unique_and_every_citation_resolves():
    import re
    from collections import Counter

    from lib.book.papers import BOOK_DIR

    bib = (BOOK_DIR / "references.bib").read_text()
    keys = re.findall(r"^@\w+\{([^,\s]+),", bib, flags=re.MULTILINE)
    duplicates = [k for k, n in Counter(keys).items() if n > 1]
    assert not duplicates, f"duplicate BibTeX keys in references.bib: {duplicates}"
    for md in build.chapter_sources():
        for group in re.findall(r"\{cite:[a-z]+\}`([^`]+)`", md.read_text()):
            for key in group.split(","):
                key = key.strip()
                assert key in keys, f"{md.name} cites {key!r}, which references.bib lacks"


def test_stderr_outputs_lists_untagged_stderr_streams():
    import nbformat

    from lib.book.pytest_chapters import stderr_outputs

    nb = nbformat.v4.new_notebook()
    noisy = nbformat.v4.new_code_cell("x")
    noisy.outputs = [nbformat.v4.new_output("stream", name="stdout", text="fine\n"),
                     nbformat.v4.new_output("stream", name="stderr", text="a warning\n")]
    tagged = nbformat.v4.new_code_cell("y", metadata={"tags": ["remove-stderr"]})
    tagged.outputs = [nbformat.v4.new_output("stream", name="stderr", text="hidden\n")]
    nb.cells = [nbformat.v4.new_markdown_cell("# t"), noisy, tagged]
    assert stderr_outputs(nb) == [(1, "a warning\n")]
