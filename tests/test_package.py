"""scripts/check_package.py, the checks of `make package`: cheap parts here, on made-up release files.

`make package` itself (a build, a fresh venv, every module imported there) is a stage of `make test`;
these tests make sure its checks catch what they are for: a module or a data file left out of the wheel,
a file the sdist lacks, a wrong version.
"""

from __future__ import annotations

import io
import tarfile
import zipfile
from pathlib import Path

import pytest

import retnet_mini
from project_scripts import load_script

check = load_script("check_package")
VERSION = retnet_mini.__version__


def test_the_source_version_is_the_package_version():
    assert check.source_version() == VERSION


def test_the_checkout_files_are_the_package_modules():
    files = check.checkout_files()
    assert "retnet_mini/__init__.py" in files and "retnet_mini/exercises/__init__.py" in files
    assert not [f for f in files if "__pycache__" in f]
    modules = check.module_names(files)
    assert {"retnet_mini", "retnet_mini.retention", "retnet_mini.exercises", "retnet_mini.exercises.intro"} <= modules
    assert check.module_names({"retnet_mini/data.json"}) == set()


def test_every_module_the_notebooks_import_from_the_package_ships():
    modules = check.module_names(check.checkout_files())
    imports = check.notebook_imports()
    ours = {module for module, _ in imports if module.split(".")[0] == "retnet_mini"}
    assert ours and ours <= modules, ours - modules
    assert ("torch", []) in imports  # what the fresh venv must provide besides the package


def _dist(tmp_path: Path, files: dict[str, bytes], version: str = VERSION, sdist_extra: tuple = (),
          metadata: str | None = None) -> Path:
    """A wheel and an sdist holding `files` (package files), as `python -m build` names them."""
    dist = tmp_path / "dist"
    dist.mkdir()
    info = f"retnet_mini-{version}.dist-info"
    metadata = metadata or f"Metadata-Version: 2.4\nName: retnet_mini\nVersion: {version}\nProvides-Extra: book\n\n"
    with zipfile.ZipFile(dist / f"retnet_mini-{version}-py3-none-any.whl", "w") as z:
        for name, data in files.items():
            z.writestr(name, data)
        z.writestr(f"{info}/METADATA", metadata)
        z.writestr(f"{info}/RECORD", "")
    with tarfile.open(dist / f"retnet_mini-{version}.tar.gz", "w:gz") as t:
        for name, data in {**files, **{n: b"" for n in (*check.SDIST_EXTRAS, *sdist_extra)}}.items():
            member = tarfile.TarInfo(f"retnet_mini-{version}/{name}")
            member.size = len(data)
            t.addfile(member, io.BytesIO(data))
    return dist


FILES = {"retnet_mini/__init__.py": b"", "retnet_mini/retention.py": b"", "retnet_mini/exercises/__init__.py": b""}


def test_check_dist_accepts_complete_release_files(tmp_path):
    wheel, sdist = check.check_dist(_dist(tmp_path, FILES), VERSION, set(FILES))
    assert wheel.name == f"retnet_mini-{VERSION}-py3-none-any.whl" and sdist.name == f"retnet_mini-{VERSION}.tar.gz"


def test_check_dist_refuses_a_wheel_without_a_file_of_the_checkout(tmp_path):
    # e.g. a data file the package reads at run time, which setuptools leaves out unless told
    with pytest.raises(check.Failed, match="missing .*retnet_mini/table.json"):
        check.check_dist(_dist(tmp_path, FILES), VERSION, set(FILES) | {"retnet_mini/table.json"})


def test_check_dist_refuses_a_wheel_with_a_stray_file(tmp_path):
    with pytest.raises(check.Failed, match="unexpected .*tests/test_x.py"):
        check.check_dist(_dist(tmp_path, {**FILES, "tests/test_x.py": b""}), VERSION, set(FILES))


def test_check_dist_refuses_another_version(tmp_path):
    with pytest.raises(check.Failed, match="expected retnet_mini-9.9.9"):
        check.check_dist(_dist(tmp_path, FILES), "9.9.9", set(FILES))


def test_check_dist_refuses_metadata_without_the_book_extra(tmp_path):
    metadata = f"Metadata-Version: 2.4\nName: retnet_mini\nVersion: {VERSION}\n\n"
    with pytest.raises(check.Failed, match="Provides-Extra: book"):
        check.check_dist(_dist(tmp_path, FILES, metadata=metadata), VERSION, set(FILES))


def test_check_dist_refuses_an_sdist_without_the_changelog(tmp_path):
    dist = _dist(tmp_path, FILES)
    sdist = dist / f"retnet_mini-{VERSION}.tar.gz"
    with tarfile.open(sdist) as t:
        kept = [(m, t.extractfile(m).read()) for m in t.getmembers() if not m.name.endswith("CHANGELOG.md")]
    with tarfile.open(sdist, "w:gz") as t:
        for member, data in kept:
            t.addfile(member, io.BytesIO(data))
    with pytest.raises(check.Failed, match="lacks .*CHANGELOG.md"):
        check.check_dist(dist, VERSION, set(FILES))
