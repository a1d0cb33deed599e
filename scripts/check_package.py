#!/usr/bin/env python
"""Build the release files of `retnet_mini` and check them as a user gets them (`make package`).

    .venv/bin/python scripts/check_package.py --torch-spec "torch==2.13.0"

1. `python -m build` into _build/dist: the sdist, then the wheel built from that sdist (not from the
   checkout), so the sdist is known to hold what a build needs.
2. Both are named retnet_mini-<version>, with <version> the package's `__version__` (its one home); the
   wheel's metadata says that version and the `book` extra; the wheel holds exactly the files of
   retnet_mini/ in the checkout (tracked or not yet added, as git sees them), the sdist those files and
   pyproject.toml, README.md and CHANGELOG.md.
3. A fresh virtual environment in _build/package-venv: torch installed first, as `make env` installs it
   (--torch-spec, the Makefile's TORCH_SPEC), then the wheel with its `book` extra; `pip check`.
4. In that environment, in isolated mode (`python -I`) from a temporary folder outside the checkout, so
   that nothing can come from the source tree: every module of the installed package imported (found by
   pkgutil, and the same set as in the checkout), each from the environment's site-packages; every import
   statement of every notebook in book/ executed; `__version__` equal to the installed metadata; and the
   three forms of retention computed and compared, so the package works, not only imports.

Prints one line per step with its time, writes _build/reports/package.json (read by .ci/run's summary)
and exits non-zero at the first failed check. The environment (1.2 GB, mostly torch) is removed when every
check passed and kept for a look when one failed.
"""

from __future__ import annotations

import argparse
import ast
import json
import shlex
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "retnet_mini"
SDIST_EXTRAS = {"pyproject.toml", "README.md", "CHANGELOG.md"}  # besides the package's own files

# Runs in the fresh environment (python -I, cwd a temporary folder). argv[1]: JSON of the import
# statements of the notebooks, as [module, [names]] ([] for `import module`).
IN_VENV = r'''
import importlib, importlib.metadata, json, pkgutil, sys, sysconfig
from pathlib import Path

site = Path(sysconfig.get_paths()["purelib"]).resolve()
import retnet_mini

modules = ["retnet_mini"] + sorted(m.name for m in pkgutil.walk_packages(retnet_mini.__path__, "retnet_mini."))
outside = {}
for name in modules:
    module = importlib.import_module(name)
    if site not in Path(module.__file__).resolve().parents:
        outside[name] = module.__file__

for module, names in json.loads(sys.argv[1]):
    imported = importlib.import_module(module)
    for name in names:  # `from module import name`: an attribute, or else a submodule
        if not hasattr(imported, name):
            importlib.import_module(f"{module}.{name}")

import torch
from retnet_mini import chunkwise_retention, paper_log_decay, parallel_retention, recurrent_retention

torch.manual_seed(0)
q, k, v = torch.randn(3, 1, 2, 37, 8, dtype=torch.float64)
log_decay = paper_log_decay(2)
o = parallel_retention(q, k, v, log_decay)
gap = max(float((o - recurrent_retention(q, k, v, log_decay)[0]).abs().max()),
          float((o - chunkwise_retention(q, k, v, log_decay, chunk_size=10)[0]).abs().max()))

print(json.dumps({"modules": modules, "outside": outside, "version": retnet_mini.__version__,
                  "metadata_version": importlib.metadata.version("retnet_mini"), "forms_gap": gap,
                  "torch": torch.__version__, "python": sys.version.split()[0]}))
'''


class Failed(Exception):
    """A check failed; the message says which and what was seen."""


def run(cmd: list[str], **kwargs: Any) -> subprocess.CompletedProcess:
    """Run a command; on failure raise Failed with the end of its output."""
    done = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kwargs)
    if done.returncode != 0:
        raise Failed(f"`{shlex.join(cmd)}` exited {done.returncode}:\n{done.stdout[-3000:]}")
    return done


def source_version() -> str:
    """`__version__` of retnet_mini/__init__.py, read without importing the package (as the build reads it)."""
    tree = ast.parse((ROOT / PACKAGE / "__init__.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "__version__" for t in node.targets):
            return ast.literal_eval(node.value)
    raise Failed(f"{PACKAGE}/__init__.py sets no __version__")


def checkout_files() -> set[str]:
    """The files of retnet_mini/ in the checkout, as git sees them (tracked, or new and not ignored)."""
    if (ROOT / ".git").exists():
        out = run(["git", "ls-files", "--cached", "--others", "--exclude-standard", PACKAGE], cwd=ROOT).stdout
        files = set(out.split())
    else:  # an unpacked sdist or an export: every file but bytecode
        files = {str(p.relative_to(ROOT)) for p in (ROOT / PACKAGE).rglob("*")
                 if p.is_file() and "__pycache__" not in p.parts}
    return {f for f in files if (ROOT / f).is_file()}  # a deleted, not yet committed file is not there


def module_names(files: set[str]) -> set[str]:
    """Dotted module names of the .py files among `files`."""
    names = set()
    for f in files:
        if f.endswith(".py"):
            parts = f[:-3].split("/")
            names.add(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names


def notebook_imports(book: Path = ROOT / "book") -> list[tuple[str, list[str]]]:
    """Every absolute import statement in the notebooks' code cells, as (module, names)."""
    import nbformat
    from IPython.core.inputtransformer2 import TransformerManager

    found: set[tuple[str, tuple[str, ...]]] = set()
    for path in sorted(book.glob("*.ipynb")):
        for cell in nbformat.read(path, as_version=4).cells:
            if cell.cell_type != "code":
                continue
            tree = ast.parse(TransformerManager().transform_cell(cell.source))  # %pip etc. become calls
            for node in ast.walk(tree):
                if isinstance(node, ast.Import):
                    found.update((alias.name, ()) for alias in node.names)
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    found.add((node.module, tuple(a.name for a in node.names if a.name != "*")))
    return [(module, list(names)) for module, names in sorted(found)]


def check_dist(dist: Path, version: str, expected: set[str]) -> tuple[Path, Path]:
    """The wheel and the sdist: names, metadata, and the files they hold."""
    wheels, sdists = sorted(dist.glob("*.whl")), sorted(dist.glob("*.tar.gz"))
    if [w.name for w in wheels] != [f"{PACKAGE}-{version}-py3-none-any.whl"] or \
            [s.name for s in sdists] != [f"{PACKAGE}-{version}.tar.gz"]:
        raise Failed(f"expected {PACKAGE}-{version} as one wheel and one sdist in {dist}, "
                     f"got {[p.name for p in wheels + sdists]}")
    wheel, sdist = wheels[0], sdists[0]
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        info = f"{PACKAGE}-{version}.dist-info"
        metadata = z.read(f"{info}/METADATA").decode()
    headers = [line.split(": ", 1) for line in metadata.split("\n\n", 1)[0].splitlines() if ": " in line]
    if ["Version", version] not in headers or ["Provides-Extra", "book"] not in headers:
        raise Failed(f"{wheel.name}: METADATA lacks `Version: {version}` or `Provides-Extra: book`")
    in_wheel = {n for n in names if not n.startswith(info + "/")}
    if in_wheel != expected:
        raise Failed(f"{wheel.name} differs from the checkout's {PACKAGE}/: missing "
                     f"{sorted(expected - in_wheel)}, unexpected {sorted(in_wheel - expected)}")
    with tarfile.open(sdist) as t:
        top = f"{PACKAGE}-{version}/"
        in_sdist = {m.name[len(top):] for m in t.getmembers() if m.isfile() and m.name.startswith(top)}
    missing = (expected | SDIST_EXTRAS) - in_sdist
    if missing:
        raise Failed(f"{sdist.name} lacks {sorted(missing)}")
    return wheel, sdist


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--torch-spec", default="torch==2.13.0",
                        help="pip arguments that install torch first (the Makefile's TORCH_SPEC)")
    parser.add_argument("--dist", type=Path, default=ROOT / "_build" / "dist")
    parser.add_argument("--venv", type=Path, default=ROOT / "_build" / "package-venv")
    parser.add_argument("--report", type=Path, default=ROOT / "_build" / "reports" / "package.json")
    args = parser.parse_args(argv)
    report: dict[str, Any] = {"ok": False, "seconds": {}}
    t0 = time.perf_counter()

    def step(name: str, started: float, what: str) -> None:
        report["seconds"][name] = round(time.perf_counter() - started, 1)
        print(f"package: {what}  [{report['seconds'][name]:.1f} s]", flush=True)

    try:
        version = source_version()
        files = checkout_files()
        report["version"] = version

        t = time.perf_counter()
        shutil.rmtree(args.dist, ignore_errors=True)
        run([sys.executable, "-m", "build", "--outdir", str(args.dist), str(ROOT)])
        wheel, sdist = check_dist(args.dist, version, files)
        report.update(wheel=wheel.name, sdist=sdist.name, files=len(files))
        step("build", t, f"built {sdist.name} and, from it, {wheel.name} ({len(files)} files of {PACKAGE}/)")

        t = time.perf_counter()
        shutil.rmtree(args.venv, ignore_errors=True)
        run([sys.executable, "-m", "venv", str(args.venv)])
        python = str(args.venv / "bin" / "python")
        run([python, "-m", "pip", "install", "-q", *shlex.split(args.torch_spec)])
        step("torch", t, f"fresh venv {args.venv.relative_to(ROOT) if ROOT in args.venv.parents else args.venv} "
                         f"with {args.torch_spec}")

        t = time.perf_counter()
        run([python, "-m", "pip", "install", "-q", f"{wheel.resolve()}[book]"])
        run([python, "-m", "pip", "check"])
        step("install", t, f"installed {wheel.name}[book]; pip check: no broken requirements")

        t = time.perf_counter()
        imports = notebook_imports()
        with tempfile.TemporaryDirectory() as cwd:
            # -I: no PYTHON* variables, no user site, neither the cwd nor a script's folder on sys.path.
            out = run([python, "-I", "-c", IN_VENV, json.dumps(imports)], cwd=cwd).stdout
        seen = json.loads(out.strip().splitlines()[-1])
        if seen["outside"]:
            raise Failed(f"modules imported from outside the fresh venv: {seen['outside']}")
        if set(seen["modules"]) != module_names(files):
            raise Failed(f"modules found in the installed package {sorted(set(seen['modules']))} differ from "
                         f"the checkout's {sorted(module_names(files))}")
        if not seen["version"] == seen["metadata_version"] == version:
            raise Failed(f"__version__ {seen['version']}, metadata {seen['metadata_version']}, source {version}")
        if not seen["forms_gap"] < 1e-10:
            raise Failed(f"the installed package's three forms disagree by {seen['forms_gap']:.2e}")
        report.update(modules=len(seen["modules"]), notebook_imports=len(imports), torch=seen["torch"],
                      python=seen["python"], forms_gap=seen["forms_gap"])
        step("import", t, f"imported all {len(seen['modules'])} modules of {PACKAGE} {version} and the notebooks' "
                          f"{len(imports)} import statements from the venv (torch {seen['torch']}); three forms "
                          f"agree to {seen['forms_gap']:.1e}")
        report["ok"] = True
        shutil.rmtree(args.venv)
    except Failed as failure:
        report["error"] = str(failure)
        print(f"package FAILED: {failure}", file=sys.stderr)
    report["seconds"]["total"] = round(time.perf_counter() - t0, 1)
    args.report.parent.mkdir(parents=True, exist_ok=True)
    args.report.write_text(json.dumps(report, indent=1) + "\n")
    if report["ok"]:
        print(f"package OK: {report['wheel']} and {report['sdist']} in "
              f"{args.dist.relative_to(ROOT) if ROOT in args.dist.parents else args.dist}  "
              f"[{report['seconds']['total']:.1f} s]")
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
