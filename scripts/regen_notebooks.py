#!/usr/bin/env python
"""Regenerate the stored outputs of the book's notebooks, deterministically.

    .venv/bin/python scripts/regen_notebooks.py                 # every notebook in book/
    .venv/bin/python scripts/regen_notebooks.py book/intro.ipynb # only these
    .venv/bin/python scripts/regen_notebooks.py --install-cells  # only the install cells and README links

Each notebook is executed top to bottom in a fresh kernel of the current environment (nbclient, in the
notebook's folder, as nbval and Jupyter Book run it) and written back so that running this script twice
changes nothing, byte for byte:

- the first cell is (re)written to the hidden Colab install cell, which installs the package from the
  repository and git ref named in _config.yml (`repository.url` and `repository.branch`, the one place
  they are set; see Repository);
- no execution timestamps (record_timing=False);
- widget model ids renamed to ids computed from the notebook's name and each model's content;
- consecutive stream outputs of the same stream merged (how a stream is split depends on flush timing);
- volatile metadata dropped (Python version, editor and Colab bookkeeping, cell timings);
- every exercise solution (a code cell tagged `solution`) hidden where learners work: tagged `hide-input`
  (collapsed on the website), `jupyter.source_hidden` (collapsed in JupyterLab and Notebook 7), and
  `cellView: form` with a `# @title` first line (Colab shows the title and hides the code).

A cell that raises fails the script, unless the cell is tagged `raises-exception`.

Every run also rewrites the block of repository links in README.md. `--install-cells` does only that and
rewrites each notebook's install cell, executing nothing (seconds, not the ten minutes of a full run): what
a fork or a release needs after changing `repository.url` or `repository.branch`. It writes the very bytes
a full run would, since the install cell prints nothing outside Colab.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from queue import Empty
from typing import Any, Dict, List

import nbformat
import yaml
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parent.parent
BOOK = ROOT / "book"
CELL_TIMEOUT_S = 600

COLAB_CELL_ID = "colab-install"
COLAB_CELL_TAGS = ["remove-cell"]

# Notebook-level metadata kept (everything else is editor or run bookkeeping).
KEEP_NOTEBOOK_METADATA = ("kernelspec", "language_info", "widgets", "jupytext", "mystnb", "myst")
VOLATILE_LANGUAGE_INFO = ("version",)
# Cell-level metadata dropped.
VOLATILE_CELL_METADATA = ("execution", "ExecuteTime", "collapsed", "scrolled", "colab", "outputId", "id",
                          "executionInfo", "papermill", "vscode", "jupyter")
# Exercise solutions (code cells tagged `solution`) are hidden wherever the notebook is read; see
# hide_solutions, the one place that sets this (normalize applies it, so regenerating cannot lose it).
SOLUTION_TAG = "solution"
SOLUTION_TAGS = ("hide-input",)  # Jupyter Book: input collapsed on the website ("Click to show")
SOLUTION_TITLE = "# @title Solution (double-click to show)"  # Colab: the form's title, shown instead of the code
SOLUTION_METADATA = {
    "jupyter": {"source_hidden": True},  # JupyterLab / Notebook 7: input collapsed
    "cellView": "form",  # Colab: the cell shown as its form (the title), code hidden
}
FORM_TITLE = re.compile(r"#\s*@title\b")
KERNELSPEC = {"display_name": "Python 3 (ipykernel)", "language": "python", "name": "python3"}
WIDGET_STATE = "application/vnd.jupyter.widget-state+json"
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"


# ------------------------------------------------------------------ the repository, named in one place
# `repository.url` and `repository.branch` in _config.yml name the repository and the git ref the book
# points at. Jupyter Book reads them for the launch buttons (Colab and Binder open
# .../blob/<branch>/book/<chapter>.ipynb), the repository button and the issues button; this script writes
# them into every notebook's install cell and into README.md's block of links. tests/test_publishing.py
# checks that all of them agree and that nothing else names the repository.
GITHUB_URL = re.compile(
    r"https://github\.com/(?P<owner>[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)/(?P<name>[A-Za-z0-9._-]+)")
GIT_REF = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._/-]*")
# pip installs the repository's default branch when the URL names no ref. The install cells of main leave
# main implicit (the plain `git+URL`); any other ref, a release tag above all, is pinned with `@ref`.
DEFAULT_BRANCH = "main"
COLAB = "https://colab.research.google.com"
README = ROOT / "README.md"
README_BEGIN = "<!-- repository links: written by scripts/regen_notebooks.py from _config.yml; edit them there -->"
README_END = "<!-- end of repository links -->"


@dataclass(frozen=True)
class Repository:
    """The repository the book is published from and the git ref (branch or tag) its links point at."""

    url: str  # https://github.com/OWNER/NAME
    ref: str  # `main`, or in a release commit its tag, e.g. `v0.1.0`

    def __post_init__(self) -> None:
        # Colab opens notebooks from GitHub only, and Pages serves OWNER.github.io: refuse anything else
        # here, before a wrong link is written into nine notebooks.
        if not GITHUB_URL.fullmatch(self.url) or self.url.endswith(".git"):
            raise ValueError(f"repository.url must be https://github.com/OWNER/NAME, got {self.url!r}")
        if not GIT_REF.fullmatch(self.ref) or ".." in self.ref or self.ref.endswith((".", "/", ".lock")):
            raise ValueError(f"repository.branch must be a git branch or tag name, got {self.ref!r}")

    @property
    def owner(self) -> str:
        return GITHUB_URL.fullmatch(self.url)["owner"]

    @property
    def name(self) -> str:
        return GITHUB_URL.fullmatch(self.url)["name"]

    def install_requirement(self) -> str:
        """What the install cells give pip: the package, its `book` extra, from this repository and ref."""
        ref = "" if self.ref == DEFAULT_BRANCH else f"@{self.ref}"
        return f"retnet_mini[book] @ git+{self.url}{ref}"

    def colab_link(self, notebook: str) -> str:
        """The Colab link of a notebook (a path from the repository root), as the launch button builds it."""
        return f"{COLAB}/github/{self.owner}/{self.name}/blob/{self.ref}/{notebook}"

    def site_url(self) -> str:
        """Where GitHub Pages serves the site (OWNER.github.io serves the repository of that name at /)."""
        host = f"{self.owner.lower()}.github.io"
        return f"https://{host}/" if self.name.lower() == host else f"https://{host}/{self.name}/"


def repository(config_path: Path = ROOT / "_config.yml") -> Repository:
    """The repository and ref, from `repository.url` and `repository.branch` in _config.yml."""
    config = yaml.safe_load(config_path.read_text()) or {}
    section = config.get("repository") or {}
    url, ref = section.get("url"), section.get("branch")
    # Jupyter Book's own default branch is `master`: a missing key would make the launch buttons and
    # the install cells disagree, so both keys are required.
    if not url or not ref:
        raise SystemExit(f"{config_path}: repository.url and repository.branch must both be set")
    try:
        return Repository(str(url).rstrip("/"), str(ref))
    except ValueError as error:
        raise SystemExit(f"{config_path}: {error}") from None


def colab_cell_source(repo: Repository) -> str:
    """Source of every notebook's first cell: installs the package in Colab only (a no-op elsewhere)."""
    return (
        "# Runs only in Google Colab: install this book's package (elsewhere it is already installed).\n"
        "import sys\n"
        'if "google.colab" in sys.modules:\n'
        f'    %pip install -q "{repo.install_requirement()}"'
    )


def readme_links(repo: Repository, chapter: str) -> str:
    """README.md's block of links: the website, a chapter in Colab, the package as the cells install it."""
    return "\n".join([
        README_BEGIN,
        f"- the website: <{repo.site_url()}>",
        f"- a chapter in Colab: `{repo.colab_link('book/CHAPTER.ipynb')}`, for example"
        f" [the first chapter]({repo.colab_link(chapter)})",
        f'- the package, as every notebook\'s install cell installs it: `pip install "{repo.install_requirement()}"`',
        README_END,
    ])


def first_chapter(toc_path: Path = ROOT / "_toc.yml") -> str:
    """The notebook the book opens with (the `root` of _toc.yml), as a path from the repository root."""
    return str(yaml.safe_load(toc_path.read_text())["root"]) + ".ipynb"


def with_readme_links(text: str, repo: Repository, first: str) -> str:
    """README text with its block of repository links rewritten (the block must be there once)."""
    if text.count(README_BEGIN) != 1 or text.count(README_END) != 1:
        raise SystemExit(f"README.md must hold the block of repository links once, from {README_BEGIN!r} "
                         f"to {README_END!r}")
    head, rest = text.split(README_BEGIN)
    _, tail = rest.split(README_END)
    return head + readme_links(repo, first) + tail


def update_readme(repo: Repository, readme: Path = README) -> bool:
    """Rewrite README.md's repository links; return whether the file changed."""
    text = readme.read_text(encoding="utf-8")
    new = with_readme_links(text, repo, first_chapter())
    if new != text:
        readme.write_text(new, encoding="utf-8")
    return new != text


def has_colab_cell(nb: nbformat.NotebookNode) -> bool:
    """Whether cell 0 is a Colab install cell (of any version)."""
    first = nb.cells[0] if nb.cells else None
    return first is not None and first.cell_type == "code" and (
        first.get("id") == COLAB_CELL_ID or "google.colab" in first.source)


def ensure_colab_cell(nb: nbformat.NotebookNode, repo: Repository) -> None:
    """Make cell 0 the Colab install cell (replacing an older version of it, or inserting it)."""
    source = colab_cell_source(repo)
    if has_colab_cell(nb):
        first = nb.cells[0]
        first.source = source
        first.id = COLAB_CELL_ID
        tags = [t for t in first.metadata.get("tags", []) if t not in COLAB_CELL_TAGS]
        first.metadata["tags"] = COLAB_CELL_TAGS + tags
    else:
        cell = nbformat.v4.new_code_cell(source=source, metadata={"tags": list(COLAB_CELL_TAGS)})
        cell.id = COLAB_CELL_ID
        nb.cells.insert(0, cell)


def merge_streams(outputs: List[Any]) -> List[Any]:
    """Merge consecutive stream outputs of the same stream (stdout/stderr) into one."""
    merged: List[Any] = []
    for out in outputs:
        if (out.get("output_type") == "stream" and merged and merged[-1].get("output_type") == "stream"
                and merged[-1].get("name") == out.get("name")):
            merged[-1]["text"] = merged[-1]["text"] + out["text"]
        else:
            merged.append(out)
    return merged


def _content_ids(state: Dict[str, Any], name: str) -> Dict[str, str]:
    """A new id for every model in a widget state, computed from its content (Merkle style).

    The id is a hash of the notebook's name and of the model's JSON in which every reference
    "IPY_MODEL_<id>" is replaced by the referenced model's new id. It depends neither on the random ids
    of a run nor on the order of the state's keys (nbformat writes them sorted), so normalizing twice
    gives the same notebook. Two models with the very same content get the same id; they are then one
    model, which renders the same.
    """
    new: Dict[str, str] = {}
    visiting: set = set()

    def canonical(obj: Any) -> Any:
        if isinstance(obj, dict):
            return {k: canonical(v) for k, v in obj.items()}
        if isinstance(obj, list):
            return [canonical(v) for v in obj]
        if isinstance(obj, str) and obj.startswith("IPY_MODEL_") and obj[len("IPY_MODEL_"):] in state:
            return "IPY_MODEL_" + model_id(obj[len("IPY_MODEL_"):])
        return obj

    def model_id(old: str) -> str:
        if old in new:
            return new[old]
        if old in visiting:  # a reference cycle (ipywidgets makes none): cut it deterministically
            return "CYCLE"
        visiting.add(old)
        text = json.dumps(canonical(state[old]), sort_keys=True)
        visiting.discard(old)
        new[old] = hashlib.sha1(f"{name}\n{text}".encode()).hexdigest()[:32]
        return new[old]

    for old in state:
        model_id(old)
    return new


def _rename(obj: Any, mapping: Dict[str, str]) -> Any:
    """Replace model ids (as values, as dict keys, and as "IPY_MODEL_<id>" references) everywhere in obj."""
    if isinstance(obj, dict):
        return type(obj)((mapping.get(k, k), _rename(v, mapping)) for k, v in obj.items())
    if isinstance(obj, list):
        return [_rename(v, mapping) for v in obj]
    if isinstance(obj, str):
        if obj in mapping:
            return mapping[obj]
        if obj.startswith("IPY_MODEL_") and obj[len("IPY_MODEL_"):] in mapping:
            return "IPY_MODEL_" + mapping[obj[len("IPY_MODEL_"):]]
    return obj


def rename_widget_ids(nb: nbformat.NotebookNode, name: str) -> None:
    """Rename widget model ids to ids computed from the models' content (see :func:`_content_ids`)."""
    state = nb.metadata.get("widgets", {}).get(WIDGET_STATE, {}).get("state", {})
    mapping = _content_ids(state, name)
    # A view whose model is not in the stored state: name it by its place among such views.
    orphans = 0
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            model_id = out.get("data", {}).get(WIDGET_VIEW, {}).get("model_id")
            if model_id and model_id not in mapping:
                mapping[model_id] = hashlib.sha1(f"{name}\norphan view {orphans}".encode()).hexdigest()[:32]
                orphans += 1
    if not mapping:
        return
    if "widgets" in nb.metadata:
        nb.metadata["widgets"] = nbformat.from_dict(_rename(nb.metadata["widgets"], mapping))
    for cell in nb.cells:
        if "outputs" in cell:
            cell["outputs"] = nbformat.from_dict(_rename(cell["outputs"], mapping))


def strip_volatile_metadata(nb: nbformat.NotebookNode) -> None:
    """Drop metadata that changes from run to run or machine to machine."""
    for key in list(nb.metadata):
        if key not in KEEP_NOTEBOOK_METADATA:
            del nb.metadata[key]
    nb.metadata["kernelspec"] = dict(KERNELSPEC)
    info = nb.metadata.get("language_info")
    if info is not None:
        for key in VOLATILE_LANGUAGE_INFO:
            info.pop(key, None)
    for cell in nb.cells:
        for key in VOLATILE_CELL_METADATA:
            cell.metadata.pop(key, None)
        if cell.cell_type != "code":
            cell.pop("outputs", None)
            cell.pop("execution_count", None)


def hide_solutions(nb: nbformat.NotebookNode) -> None:
    """Hide every `solution`-tagged code cell on the website, in JupyterLab / Notebook 7 and in Colab.

    Adds the `hide-input` tag if missing, sets SOLUTION_METADATA, and makes the source's first line
    SOLUTION_TITLE (replacing a `# @title` line already there, inserting it otherwise). Idempotent.
    """
    for cell in nb.cells:
        tags = cell.metadata.get("tags", [])
        if cell.cell_type != "code" or SOLUTION_TAG not in tags:
            continue
        cell.metadata["tags"] = [t for t in SOLUTION_TAGS if t not in tags] + list(tags)
        for key, value in SOLUTION_METADATA.items():
            cell.metadata[key] = nbformat.from_dict(value)  # a copy
        lines = cell.source.split("\n")
        if FORM_TITLE.match(lines[0]):
            lines = lines[1:]
        cell.source = "\n".join([SOLUTION_TITLE] + lines)


def normalize(nb: nbformat.NotebookNode, name: str) -> nbformat.NotebookNode:
    """Apply every deterministic rewrite except execution (used after executing, and by the tests)."""
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs = merge_streams(cell.outputs)
    rename_widget_ids(nb, name)
    strip_volatile_metadata(nb)
    hide_solutions(nb)  # after the strip, which drops "jupyter" metadata from every other cell
    return nb


class _Client(NotebookClient):
    """NotebookClient that polls the shell channel in 1 s slices.

    With widgets, a cell's execute_reply is sometimes noticed only when the poll's timeout (the cell
    timeout) runs out, although it arrived at once (jupyter/nbclient#312): the run still succeeds, ten
    minutes later. Polling in short slices picks the reply up within a second.
    """

    async def async_start_new_kernel_client(self):
        kc = await super().async_start_new_kernel_client()
        channel = kc.shell_channel
        get_msg = channel.get_msg

        async def get_msg_in_slices(timeout=None):
            deadline = None if timeout is None else time.monotonic() + timeout
            while True:
                left = 1.0 if deadline is None else max(0.0, min(1.0, deadline - time.monotonic()))
                try:
                    return await get_msg(timeout=left)
                except Empty:
                    if deadline is not None and time.monotonic() >= deadline:
                        raise

        channel.get_msg = get_msg_in_slices
        return kc


def write_notebook(path: Path, nb: nbformat.NotebookNode) -> bool:
    """Write a normalized notebook as this script always writes it; return whether the file changed.

    The one writer of both modes, so that `--install-cells` and a full run give the same bytes.
    """
    nbformat.validate(nb)
    text = nbformat.writes(nb)
    if not text.endswith("\n"):
        text += "\n"
    changed = not path.is_file() or path.read_text(encoding="utf-8") != text
    if changed:
        path.write_text(text, encoding="utf-8")
    return changed


def regenerate(path: Path, repo: Repository, timeout: int = CELL_TIMEOUT_S) -> float:
    """Execute one notebook in place; return the seconds it took."""
    nb = nbformat.read(path, as_version=4)
    ensure_colab_cell(nb, repo)
    for cell in nb.cells:
        if cell.cell_type == "code" and not cell.source.strip():
            raise SystemExit(f"{path}: empty code cell (remove it: nbclient would leave it unexecuted)")
    nb.metadata.pop("widgets", None)  # the run below stores the fresh widget state
    client = _Client(
        nb,
        timeout=timeout,
        kernel_name="python3",
        record_timing=False,
        store_widget_state=True,
        resources={"metadata": {"path": str(path.parent)}},
    )
    start = time.perf_counter()
    client.execute()
    seconds = time.perf_counter() - start
    normalize(nb, path.stem)
    write_notebook(path, nb)
    return seconds


def rewrite_install_cell(path: Path, repo: Repository) -> bool:
    """Rewrite only the install cell of an executed notebook, running nothing; return whether it changed.

    The cell prints nothing outside Colab, so its stored outputs (none, execution count 1) are what a full
    run stores: the result is the file a full run would write. A notebook without an install cell needs a
    full run (inserting a cell shifts every execution count).
    """
    nb = nbformat.read(path, as_version=4)
    if not has_colab_cell(nb):
        raise SystemExit(f"{path}: cell 0 is not the install cell; regenerate it in full: "
                         f"scripts/regen_notebooks.py {path}")
    ensure_colab_cell(nb, repo)
    return write_notebook(path, normalize(nb, path.stem))


def main(argv: List[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("notebooks", nargs="*", type=Path, help="notebooks to regenerate (default: book/*.ipynb)")
    parser.add_argument("--install-cells", action="store_true",
                        help="rewrite only each notebook's install cell and the README's links (no execution)")
    parser.add_argument("--config", type=Path, default=ROOT / "_config.yml",
                        help="where repository.url and repository.branch are read (default: _config.yml)")
    parser.add_argument("--readme", type=Path, default=README, help="the README whose links are rewritten")
    args = parser.parse_args(argv)
    paths = args.notebooks or sorted(BOOK.glob("*.ipynb"))
    if not paths:
        print("no notebooks found", file=sys.stderr)
        return 1
    repo = repository(args.config)
    for path in paths:
        path = path.resolve()
        if path.suffix != ".ipynb" or not path.is_file():
            print(f"not a notebook: {path}", file=sys.stderr)
            return 1
    for path in paths:
        path = path.resolve()
        shown = path.relative_to(ROOT) if ROOT in path.parents else path
        if args.install_cells:
            changed = rewrite_install_cell(path, repo)
            print(f"{shown}: install cell {'rewritten' if changed else 'unchanged'}")
        else:
            seconds = regenerate(path, repo)
            print(f"regenerated {shown} in {seconds:.1f} s")
    changed = update_readme(repo, args.readme)
    print(f"{args.readme.name}: repository links {'rewritten' if changed else 'unchanged'} "
          f"({repo.url}, {repo.ref}: installs {repo.install_requirement()!r})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
