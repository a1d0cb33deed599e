"""The repository is named in one place, and a release names its own version (README, "Publishing", "Releasing").

`repository.url` and `repository.branch` in _config.yml name the repository and the git ref the book points
at. Jupyter Book builds the launch, repository and issues buttons from them (the browser test checks the
built links: tests/browser/site_checks.py); scripts/regen_notebooks.py writes them into every notebook's
install cell and into README.md's links. These tests check that those agree with _config.yml, that nothing
else names the repository, that changing the config changes every place (and only cell 0 of a notebook),
and that the version, the changelog and a release's tag agree.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import nbformat
import pytest
import yaml

import retnet_mini
from project_scripts import load_script

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "book").glob("*.ipynb"))
regen = load_script("regen_notebooks")
REPO = regen.repository()


def _id(path: Path) -> str:
    return path.name


# ------------------------------------------------------------------ what _config.yml says
def test_config_names_a_github_repository_and_a_ref():
    config = yaml.safe_load((ROOT / "_config.yml").read_text())
    assert REPO.url == config["repository"]["url"] and REPO.ref == config["repository"]["branch"]
    # The Colab and Binder links, the README and the install cells assume the notebooks' paths from the
    # repository root (book/x.ipynb): the book sits at the root.
    assert config["repository"]["path_to_book"] == ""
    assert config["launch_buttons"]["colab_url"] == regen.COLAB
    assert config["html"]["use_repository_button"] is True and config["html"]["use_issues_button"] is True


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_id)
def test_every_install_cell_installs_from_the_configured_repository_and_ref(path, tmp_path):
    """Cell 0 is what the script writes from _config.yml, and rewriting it changes no byte of the file."""
    first = nbformat.read(path, as_version=4).cells[0]
    assert first.source == regen.colab_cell_source(REPO)
    assert f'%pip install -q "{REPO.install_requirement()}"' in first.source
    copy = tmp_path / path.name
    shutil.copy(path, copy)
    assert regen.rewrite_install_cell(copy, REPO) is False, (
        f"{path.name}: run `make install-cells` (scripts/regen_notebooks.py --install-cells)")
    assert copy.read_bytes() == path.read_bytes()


def test_readme_links_are_the_configured_ones():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert regen.with_readme_links(text, REPO, regen.first_chapter()) == text, (
        "README.md's repository links differ from _config.yml: run `make install-cells`")
    block = text.split(regen.README_BEGIN)[1].split(regen.README_END)[0]
    assert REPO.site_url() in block
    assert REPO.colab_link("book/intro.ipynb") in block
    assert REPO.install_requirement() in block


def test_nothing_else_names_the_repository():
    """Only _config.yml's url line, README's block of links and each notebook's cell 0 name OWNER/NAME (or
    the Pages host): a fork changes one line and runs one command."""
    names = re.compile(rf"{re.escape(REPO.owner)}/{re.escape(REPO.name)}\b|{re.escape(REPO.owner)}\.github\.io",
                       re.IGNORECASE)
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"], cwd=ROOT,
                            capture_output=True, check=True).stdout.decode().split("\0")
    found = []
    for name in filter(None, listed):
        path = ROOT / name
        if not path.is_file():
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue  # images
        if path.suffix == ".ipynb":
            text = json.dumps(json.loads(text)["cells"][1:]) + json.dumps(json.loads(text)["metadata"])
        elif name == "README.md":
            head, rest = text.split(regen.README_BEGIN)
            text = head + rest.split(regen.README_END)[1]
        elif name == "_config.yml":
            text = text.replace(f"  url: {REPO.url}\n", "", 1)
        found += [f"{name}: {m.group(0)}" for m in names.finditer(text)]
    assert not found, f"the repository is named outside _config.yml (use regen_notebooks.repository()): {found}"


# ------------------------------------------------------------------ one line changed
FORK = "https://github.com/Someone/retnet-fork"


def _fork_config(tmp_path: Path, url: str = FORK, branch: str = "v9.8.7") -> Path:
    config = (ROOT / "_config.yml").read_text()
    assert config.count(f"  url: {REPO.url}\n") == 1 and config.count(f"  branch: {REPO.ref}\n") == 1
    path = tmp_path / "_config.yml"
    path.write_text(config.replace(f"  url: {REPO.url}\n", f"  url: {url}\n")
                          .replace(f"  branch: {REPO.ref}\n", f"  branch: {branch}\n"))
    return path


def test_changing_the_config_changes_what_the_script_writes(tmp_path):
    fork = regen.repository(_fork_config(tmp_path))
    assert (fork.url, fork.ref, fork.owner, fork.name) == (FORK, "v9.8.7", "Someone", "retnet-fork")
    assert f'%pip install -q "retnet_mini[book] @ git+{FORK}@v9.8.7"' in regen.colab_cell_source(fork)
    readme = regen.with_readme_links((ROOT / "README.md").read_text(), fork, regen.first_chapter())
    block = readme.split(regen.README_BEGIN)[1].split(regen.README_END)[0]
    assert "<https://someone.github.io/retnet-fork/>" in block
    assert ("https://colab.research.google.com/github/Someone/retnet-fork/blob/v9.8.7/book/intro.ipynb"
            in block)
    assert f'pip install "retnet_mini[book] @ git+{FORK}@v9.8.7"' in block
    assert REPO.owner not in block


def test_install_cells_mode_rewrites_cell_0_only_and_back(tmp_path):
    """`--install-cells` with a fork's config, on copies: each notebook differs in cell 0's source only, the
    README in its block only; with the original config again, both are back byte for byte."""
    originals = [NOTEBOOKS[0], ROOT / "book" / "intro.ipynb"]
    copies = []
    for path in originals:
        shutil.copy(path, tmp_path / path.name)
        copies.append(tmp_path / path.name)
    readme = tmp_path / "README.md"
    shutil.copy(ROOT / "README.md", readme)
    fork_config = _fork_config(tmp_path)

    assert regen.main(["--install-cells", "--config", str(fork_config), "--readme", str(readme),
                       *map(str, copies)]) == 0
    for path, copy in zip(originals, copies):
        before, after = json.loads(path.read_text()), json.loads(copy.read_text())
        assert after["cells"][0]["source"] != before["cells"][0]["source"]
        assert f"git+{FORK}@v9.8.7" in "".join(after["cells"][0]["source"])
        after["cells"][0]["source"] = before["cells"][0]["source"]
        assert after == before, f"{path.name}: more than cell 0's source changed"
    head, tail = (ROOT / "README.md").read_text().split(regen.README_BEGIN)
    new_head, new_tail = readme.read_text().split(regen.README_BEGIN)
    assert new_head == head and new_tail.split(regen.README_END)[1] == tail.split(regen.README_END)[1]
    assert FORK in new_tail.split(regen.README_END)[0]

    assert regen.main(["--install-cells", "--readme", str(readme), *map(str, copies)]) == 0
    for path, copy in zip(originals, copies):
        assert copy.read_bytes() == path.read_bytes()
    assert readme.read_bytes() == (ROOT / "README.md").read_bytes()


def test_install_cells_mode_refuses_a_notebook_without_its_install_cell(tmp_path):
    nb = nbformat.read(ROOT / "book" / "intro.ipynb", as_version=4)
    nb.cells = nb.cells[1:]
    path = tmp_path / "intro.ipynb"
    nbformat.write(nb, path)
    before = path.read_bytes()
    with pytest.raises(SystemExit, match="not the install cell"):
        regen.rewrite_install_cell(path, REPO)
    assert path.read_bytes() == before


def test_main_stays_implicit_and_any_other_ref_is_pinned():
    url = "https://github.com/a/b"
    assert regen.Repository(url, "main").install_requirement() == f"retnet_mini[book] @ git+{url}"
    assert regen.Repository(url, "v0.1.0").install_requirement() == f"retnet_mini[book] @ git+{url}@v0.1.0"
    assert regen.Repository(url, "dev").install_requirement() == f"retnet_mini[book] @ git+{url}@dev"
    # The launch links always name the ref (Colab needs it).
    assert regen.Repository(url, "main").colab_link("book/x.ipynb") == \
        "https://colab.research.google.com/github/a/b/blob/main/book/x.ipynb"


def test_site_url():
    assert regen.Repository("https://github.com/Ann/book", "main").site_url() == "https://ann.github.io/book/"
    # A repository named OWNER.github.io is served at the root of that host.
    assert regen.Repository("https://github.com/Ann/ann.github.io", "main").site_url() == "https://ann.github.io/"


@pytest.mark.parametrize("url, ref", [
    ("https://gitlab.com/a/b", "main"),             # Colab opens GitHub notebooks only
    ("https://github.com/a/b/tree/main", "main"),   # not the repository's own URL
    ("https://github.com/a/b.git", "main"),         # would break the Colab and Pages links
    ("http://github.com/a/b", "main"),
    ("https://github.com/a/b", "two words"),
    ("https://github.com/a/b", "v1..2"),
    ("https://github.com/a/b", "-rf"),
    ("https://github.com/a/b", "x@y"),
])
def test_bad_repository_settings_are_refused(url, ref):
    with pytest.raises(ValueError):
        regen.Repository(url, ref)


def test_a_config_without_a_branch_is_refused(tmp_path):
    config = tmp_path / "_config.yml"
    config.write_text(f"repository:\n  url: {FORK}\n")  # Jupyter Book would link to `master`
    with pytest.raises(SystemExit, match="repository.branch"):
        regen.repository(config)


# ------------------------------------------------------------------ version, changelog, release tag
VERSION = re.compile(r"\d+\.\d+\.\d+")
HEADING = re.compile(r"^## \[(?P<name>[^\]]+)\](?: - (?P<date>\d{4}-\d{2}-\d{2}))?\s*$", re.M)


def _key(version: str) -> tuple[int, ...]:
    return tuple(int(x) for x in version.split("."))


def changelog_releases(text: str) -> tuple[bool, list[tuple[str, str]]]:
    """(whether it starts with an Unreleased section, [(version, date)] of the releases, newest first)."""
    headings = [(m["name"], m["date"]) for m in HEADING.finditer(text)]
    unreleased = bool(headings) and headings[0] == ("Unreleased", None)
    releases = headings[1:] if unreleased else headings
    for name, date in releases:
        assert VERSION.fullmatch(name) and date, f"CHANGELOG.md: `## [{name}]` must be `## [X.Y.Z] - YYYY-MM-DD`"
    return unreleased, releases


def release_problems(ref: str, version: str, changelog: str) -> list[str]:
    """What is wrong with a version, its changelog and the ref the install cells pin (empty: nothing)."""
    problems = []
    unreleased, releases = changelog_releases(changelog)
    versions = [v for v, _ in releases]
    if versions != sorted(versions, key=_key, reverse=True) or len(set(versions)) != len(versions):
        problems.append(f"CHANGELOG.md: releases not newest first, or repeated: {versions}")
    if versions and _key(version) < _key(versions[0]):
        problems.append(f"version {version} is older than the last release in CHANGELOG.md, {versions[0]}")
    if not unreleased and (not versions or versions[0] != version):
        problems.append(f"CHANGELOG.md has neither an [Unreleased] section nor a [{version}] release on top")
    if ref.startswith("v") and ref[1:2].isdigit():  # a release commit: its install cells pin its tag
        if ref != f"v{version}":
            problems.append(f"repository.branch pins {ref}, but the version is {version} (tag v{version})")
        if not versions or versions[0] != version:
            problems.append(f"a release commit needs `## [{version}] - YYYY-MM-DD` as CHANGELOG.md's top release")
    return problems


def test_the_version_has_one_home():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "version" not in project["project"] and project["project"]["dynamic"] == ["version"]
    assert project["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "retnet_mini.__version__"}
    assert VERSION.fullmatch(retnet_mini.__version__)


def test_version_changelog_and_ref_agree():
    assert release_problems(REPO.ref, retnet_mini.__version__, (ROOT / "CHANGELOG.md").read_text()) == []


def test_release_problems_are_found():
    released = "## [Unreleased]\n\n## [0.2.0] - 2027-01-02\n\n## [0.1.0] - 2026-12-04\n"
    assert release_problems("main", "0.2.0", released) == []
    assert release_problems("main", "0.3.0", released) == []  # the next version, in Unreleased
    assert release_problems("v0.2.0", "0.2.0", released) == []  # the release commit of 0.2.0
    assert release_problems("v0.2.0", "0.3.0", released)  # pins another version's tag
    assert release_problems("v0.3.0", "0.3.0", released)  # 0.3.0 is not in the changelog yet
    assert release_problems("main", "0.1.5", released)  # older than the last release
    assert release_problems("main", "0.3.0", released.replace("## [Unreleased]\n\n", ""))  # no notes for it
    assert release_problems("main", "0.2.0", "## [0.1.0] - 2026-12-04\n\n## [0.2.0] - 2027-01-02\n")
    with pytest.raises(AssertionError, match="YYYY-MM-DD"):
        release_problems("main", "0.2.0", "## [0.2.0]\n")


# ------------------------------------------------------------------ the README tells it
def test_readme_says_how_to_publish_and_release():
    text = (ROOT / "README.md").read_text()
    sections = dict(re.findall(r"^## (.+?)\n(.*?)(?=^## |\Z)", text, re.M | re.S))
    publishing, releasing = sections["Publishing"], sections["Releasing"]
    for needed in ("repository.url", "make install-cells", "GitHub Actions", ".github/workflows/pages.yml"):
        assert needed in publishing, f"README, Publishing: says nothing of {needed}"
    for needed in ("__version__", "CHANGELOG.md", "repository.branch", "make install-cells", "git tag",
                   "make package"):
        assert needed in releasing, f"README, Releasing: says nothing of {needed}"
    setup = re.search(r"```bash\n(.*?)```", sections["Set up"], re.S).group(1)
    commands = [line.split("#")[0].strip() for line in setup.splitlines() if line.split("#")[0].strip()]
    assert commands == ["make book", "make test"], "the README's set-up is two commands"


@pytest.mark.parametrize("pyyaml", [True, False], ids=["pyyaml", "no-pyyaml"])
def test_the_colab_rehearsal_reads_the_same_repository_and_ref(tmp_path, monkeypatch, pyyaml):
    """`make colab` redirects git from the URL the install cells name, and tags the snapshot with their ref."""
    rehearsal = load_script("colab_rehearsal")
    if not pyyaml:  # it runs on a bare Python too, reading the keys itself
        monkeypatch.setattr(rehearsal, "_yaml", lambda text: None)
    for config in (ROOT / "_config.yml", _fork_config(tmp_path)):
        text, repo = config.read_text(), regen.repository(config)
        assert (rehearsal.repository_url(text), rehearsal.repository_ref(text)) == (repo.url, repo.ref)
