"""The bibliography (book/references.bib, listed on book/references.md) and the citations that use it.

Every `{cite}` key in the book's markdown exists in references.bib; every entry there is cited somewhere
(so the references page, which lists the cited entries, lists them all); each entry has the fields its
type needs; _config.yml loads the file; the references page is the last page of the toc; and the landing
page links straight to the paper on arXiv.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml
from pybtex.database import parse_file

ROOT = Path(__file__).resolve().parent.parent
BOOK = ROOT / "book"
BIB = BOOK / "references.bib"
PAPER_URL = "https://arxiv.org/abs/2307.08621"

# {cite}`a`, {cite:p}`a,b`, {cite:t}`a`, ... (MyST role syntax, sphinxcontrib-bibtex roles)
CITE = re.compile(r"\{(?:foot)?cite(?::[a-z]+)?\}`([^`]+)`")
REQUIRED = {
    "article": ("author", "title", "year", "journal"),
    "inproceedings": ("author", "title", "year", "booktitle"),
    "misc": ("author", "title", "year", "url"),
}


def markdown_sources() -> dict[str, str]:
    """The markdown of every notebook (markdown cells only) and every .md page in book/."""
    texts = {}
    for path in sorted(BOOK.glob("*.ipynb")):
        cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
        texts[path.name] = "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "markdown")
    for path in sorted(BOOK.glob("*.md")):
        texts[path.name] = path.read_text(encoding="utf-8")
    return texts


def cited_keys() -> dict[str, set[str]]:
    keys: dict[str, set[str]] = {}
    for name, text in markdown_sources().items():
        for match in CITE.finditer(text):
            for key in match.group(1).split(","):
                keys.setdefault(key.strip(), set()).add(name)
    return keys


ENTRIES = parse_file(str(BIB), bib_format="bibtex").entries


def test_config_loads_the_bibliography():
    config = yaml.safe_load((ROOT / "_config.yml").read_text())
    assert config["bibtex_bibfiles"] == ["book/references.bib"]


def test_the_book_cites():
    assert len(cited_keys()) >= 5


def test_every_cited_key_is_in_the_bibliography():
    missing = {key: sorted(where) for key, where in cited_keys().items() if key not in ENTRIES}
    assert not missing, f"cited but not in {BIB.name}: {missing}"


def test_every_entry_is_cited():
    uncited = sorted(set(ENTRIES) - set(cited_keys()))
    assert not uncited, f"in {BIB.name} but cited nowhere in book/ (the references page would omit them): {uncited}"


@pytest.mark.parametrize("key", sorted(ENTRIES))
def test_entry_has_its_fields(key):
    entry = ENTRIES[key]
    assert entry.type in REQUIRED, f"{key}: entry type @{entry.type} not expected here"
    have = {f.lower() for f in entry.fields} | ({"author"} if entry.persons.get("author") else set())
    missing = [f for f in REQUIRED[entry.type] if f not in have]
    assert not missing, f"{key} (@{entry.type}) lacks {missing}"
    assert re.fullmatch(r"(19|20)\d\d", entry.fields["year"]), f"{key}: year {entry.fields['year']!r}"
    if "url" in entry.fields:
        assert entry.fields["url"].startswith("https://"), f"{key}: url {entry.fields['url']!r}"


def test_arxiv_entries_name_their_identifier():
    for key, entry in ENTRIES.items():
        url = entry.fields.get("url", "")
        if "arxiv.org/abs/" in url:
            identifier = url.rsplit("/", 1)[1]
            assert identifier in entry.fields.get("note", "") or entry.fields.get("eprint") == identifier, key


def test_the_references_page_is_last_in_the_toc_and_holds_the_bibliography():
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    assert toc["chapters"][-1]["file"] == "book/references"
    text = (BOOK / "references.md").read_text(encoding="utf-8")
    assert text.count("```{bibliography}") == 1, "one bibliography for the whole book (duplicates warn)"


def test_the_landing_page_links_to_the_paper():
    cells = json.loads((BOOK / "intro.ipynb").read_text(encoding="utf-8"))["cells"]
    first_markdown = next(c for c in cells if c["cell_type"] == "markdown")
    assert f"]({PAPER_URL})" in "".join(first_markdown["source"]), f"intro's first markdown cell must link {PAPER_URL}"
