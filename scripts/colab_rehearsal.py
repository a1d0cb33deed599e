#!/usr/bin/env python3
"""Rehearse what a learner's Google Colab does with the book, offline (no network but the package index).

    python3 scripts/colab_rehearsal.py                  # what HEAD would do in Colab (what CI tests)
    python3 scripts/colab_rehearsal.py --working-tree   # the same with your uncommitted work
    make colab                                          # the first, with TORCH_SPEC from the Makefile

Every notebook of the book starts with a hidden cell that runs only in Colab:

    if "google.colab" in sys.modules:
        %pip install -q "retnet_mini[book] @ git+<repository.url>"     # @<repository.branch> unless main

Nothing else runs that branch, so this script builds a Colab-like place where it does run, and runs every
notebook of _toc.yml in it, top to bottom:

1. A fresh virtual environment (in a temporary folder, or --venv DIR) with what Colab has and the book
   relies on: torch (the TORCH_SPEC pin, a local CPU wheel on the project's machines), ipywidgets 7.7.1
   (Colab's), matplotlib, numpy, tqdm, and a Jupyter kernel with nbclient to drive it. Not the package,
   not jupyter-book, not nbval.
2. A stub ``google.colab`` package (with ``output.enable_custom_widget_manager()`` as a no-op) installed
   in that environment and imported at kernel start by an IPython startup file, as Colab's kernel does:
   the install cell's branch runs.
3. git redirects ``repository.url`` (read from _config.yml, the one place it is set) to a snapshot of
   this checkout: ``url.<snapshot>.insteadOf <repository.url>`` in a git config file of its own
   (GIT_CONFIG_GLOBAL: ~/.gitconfig is neither read nor changed), with GIT_ALLOW_PROTOCOL=file so that a
   missed redirect fails instead of reaching GitHub. The snapshot is HEAD (what pip would clone from
   GitHub once it is pushed), or with --working-tree a commit of the working tree (tracked and untracked
   files that git does not ignore), made in the snapshot repository only: nothing in the checkout's .git
   changes. The notebooks, _toc.yml and _config.yml are read from the same snapshot.
4. Each notebook is copied to a folder outside the checkout and executed there with nbclient in a fresh
   kernel of that environment (cell timeout 600 s), so it can only import the pip-installed package.
   Cells tagged ``raises-exception`` may raise.
5. Checks: the install cell installed the package (``pip show retnet_mini``, its PEP 610
   direct_url.json names repository.url and the snapshot's commit) and every file of retnet_mini/ in the
   snapshot is in the installed package; in every kernel ``google.colab`` was imported and every
   ``retnet_mini`` module came from the environment's site-packages, never the checkout; every code cell
   ran; no cell wrote an error; every cell that shows widgets in the committed notebook shows them here,
   and the saved widget state uses only models that ipywidgets 7.7.1's front end has (no ``Stack``).

Prints one line per notebook (PASS/FAIL, seconds, the first error with its cell index) and one summary
line; exits non-zero on any failure. The executed notebooks and a JSON report land in --out
(_build/colab). Not rehearsed: Colab's GPU, its Python version (3.12 at the time of writing, where
pydoc_data.topics differs), and the browser side of Colab's widget rendering.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

ROOT = Path(__file__).resolve().parent.parent
MARK = "@@colab-rehearsal@@"
IPYWIDGETS_COLAB = "7.7.1"
# What the rehearsal environment gets besides torch: Colab's ipywidgets; the book's other run-time needs
# unpinned, as Colab has its own versions; the kernel and executor pinned to the tested toolchain
# (ipykernel 7 has hung in builds here, see ../shared/TOOLCHAIN.md).
COLAB_PACKAGES = [f"ipywidgets=={IPYWIDGETS_COLAB}", "matplotlib", "numpy", "tqdm",
                  "ipykernel==6.31.0", "nbclient==0.11.0", "nbformat"]
NOT_IN_COLAB_ENV = ["retnet_mini", "jupyter_book", "nbval"]  # must not be importable before the install cell
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
WIDGET_STATE = "application/vnd.jupyter.widget-state+json"
SNAPSHOT_BRANCH = "main"

STUB_COLAB = '''"""Stand-in for Google Colab's ``google.colab`` (scripts/colab_rehearsal.py): importing it is what
makes ``"google.colab" in sys.modules`` true, as in Colab."""
REHEARSAL = True
from . import output  # noqa: E402,F401
'''
STUB_OUTPUT = '''"""Stand-in for ``google.colab.output``: the widget manager switches are no-ops here."""
calls = []


def enable_custom_widget_manager():
    calls.append("enable_custom_widget_manager")


def disable_custom_widget_manager():
    calls.append("disable_custom_widget_manager")


def eval_js(*args, **kwargs):
    raise NotImplementedError("google.colab.output.eval_js needs Colab's browser front end")
'''
STARTUP = "import google.colab  # what Colab's kernel has imported before the first cell (colab_rehearsal.py)\n"

# Run in each notebook's kernel after its last cell: where the package came from, whether Colab was seen,
# and whether the frame explorers switch frames (on ipywidgets 7 the kernel switches them: move every control
# to every position and check that the frame on screen carries the values the controls show).
CHECK_CELL = f'''
import gc as _gc, html as _h, json as _j, os as _o, sys as _s


def _explorers():
    if "retnet_mini.widgets" not in _s.modules:
        return {{"found": 0}}
    rw = _s.modules["retnet_mini.widgets"]
    found = [o for o in _gc.get_objects() if isinstance(o, rw.FrameExplorer)]
    out = {{"found": len(found), "checked": 0, "positions": 0, "errors": []}}
    KernelSwitch = getattr(rw, "KernelSwitch", None)
    if KernelSwitch is None:
        out["skipped"] = "this retnet_mini.widgets has no KernelSwitch (an ipywidgets-7 path in the browser)"
        return out

    def shown(e):
        node = e.stacks[0][0]
        while isinstance(node, KernelSwitch):
            node = node.shown
            if node is None:
                return None
        label = node.children[-1].value
        return _j.loads(_h.unescape(label.split('data-values="')[1].split('"')[0]))

    for e in found:
        if getattr(e, "in_browser", True):
            continue  # jslinks run in the browser: nothing to check in the kernel
        out["checked"] += 1
        for c in e.controls:
            for i in [*range(len(c.options)), 0]:
                c.index = i
                want = [k.options[k.index][0] for k in e.controls]
                out["positions"] += 1
                if shown(e) != want:
                    out["errors"].append(f"controls at {{want}} show {{shown(e)}}")
        if e.play is not None:
            e.play.value = e.play.max
            if shown(e) != [k.options[k.index][0] for k in e.controls] or e.play.max not in \\
                    [k.index for k in e.controls]:
                out["errors"].append("Play did not move its control")
            e.play.value = 0
    return out


print({MARK!r} + _j.dumps({{
    "explorers": _explorers(),
    "executable": _s.executable,
    "prefix": _s.prefix,
    "colab": "google.colab" in _s.modules,
    "cwd": _o.getcwd(),
    "sys_path": list(_s.path),
    "modules": {{n: getattr(m, "__file__", None) for n, m in list(_s.modules.items())
                if n == "retnet_mini" or n.startswith("retnet_mini.")}},
    "ipywidgets": getattr(_s.modules.get("ipywidgets"), "__version__", None),
}}))
'''

# Run in the environment (fresh interpreter) to describe the installed package.
DIST_INFO = r'''
import json, sys
from importlib import metadata
try:
    d = metadata.distribution("retnet_mini")
except metadata.PackageNotFoundError:
    print(json.dumps(None)); sys.exit()
def v(n):
    try: return metadata.version(n)
    except metadata.PackageNotFoundError: return None
print(json.dumps({"version": d.version, "location": str(d.locate_file("")),
                  "others": {n: v(n) for n in NAMES},
                  "files": [str(f) for f in d.files or []],
                  "direct_url": json.loads(d.read_text("direct_url.json") or "null")}))
'''

ENV_INFO = r'''
import importlib.util as u, json, sys
from importlib import metadata
def v(n):
    try: return metadata.version(n)
    except metadata.PackageNotFoundError: return None
print(json.dumps({"python": sys.version.split()[0], "purelib": __import__("sysconfig").get_paths()["purelib"],
                  "versions": {n: v(n) for n in ["torch", "ipywidgets", "matplotlib", "numpy", "tqdm",
                                                  "ipykernel", "nbclient", "nbformat", "ipython"]},
                  "present": [n for n in NAMES if u.find_spec(n) is not None]}))
'''


def log(msg: str = "") -> None:
    print(msg, flush=True)


def run(cmd: Sequence[str], *, env: Optional[Dict[str, str]] = None, cwd: Optional[Path] = None,
        check: bool = True, what: str = "") -> subprocess.CompletedProcess:
    """Run a command, capturing its output; on failure raise with the tail of that output."""
    p = subprocess.run([str(c) for c in cmd], env=env, cwd=cwd, text=True, stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT)
    if check and p.returncode != 0:
        tail = "\n".join(p.stdout.splitlines()[-30:])
        raise SystemExit(f"colab rehearsal FAILED: {what or ' '.join(map(str, cmd))} "
                         f"(exit {p.returncode}):\n{tail}")
    return p


# ------------------------------------------------------------------ configuration (stdlib, PyYAML if present)

def _yaml(text: str) -> Optional[Any]:
    try:
        import yaml  # noqa: F401
    except ImportError:
        return None
    return yaml.safe_load(text)


def _repository_key(config_text: str, key: str) -> Optional[str]:
    """`repository.<key>` of _config.yml, or None."""
    data = _yaml(config_text)
    if data is not None:
        value = (data.get("repository") or {}).get(key)
    else:  # no PyYAML: the key we need, from its block
        block = re.search(r"^repository:\s*\n((?:[ \t]+.*\n?|\s*\n)*)", config_text, re.M)
        m = block and re.search(rf"^[ \t]+{key}:\s*['\"]?([^'\"#\s]+)", block.group(1), re.M)
        value = m.group(1) if m else None
    return None if value is None else str(value)


def repository_url(config_text: str) -> str:
    """`repository.url` of _config.yml (what scripts/regen_notebooks.py writes into the install cells)."""
    url = _repository_key(config_text, "url")
    if not url:
        raise SystemExit("colab rehearsal FAILED: _config.yml has no repository.url")
    return url.rstrip("/")


def repository_ref(config_text: str) -> str:
    """`repository.branch` of _config.yml: the ref the install cells pin (`@ref`) unless it is main."""
    return _repository_key(config_text, "branch") or SNAPSHOT_BRANCH


def toc_files(toc_text: str) -> List[str]:
    """The `root` and every `file` of _toc.yml, in reading order (without suffix)."""
    data = _yaml(toc_text)
    if data is None:
        return re.findall(r"^\s*(?:-\s*)?(?:root|file):\s*['\"]?([^'\"#\s]+)", toc_text, re.M)
    out: List[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for key in ("root", "file"):
                if key in node:
                    out.append(str(node[key]))
            for key, value in node.items():
                if key not in ("root", "file"):
                    walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(data)
    return out


# ------------------------------------------------------------------ the snapshot pip clones

def git(*args: str, git_dir: Optional[Path] = None, work_tree: Optional[Path] = None,
        env: Optional[Dict[str, str]] = None, what: str = "") -> str:
    cmd = ["git", "-c", "core.hooksPath=/dev/null"]
    if git_dir is not None:
        cmd += [f"--git-dir={git_dir}"]
    if work_tree is not None:
        cmd += [f"--work-tree={work_tree}"]
    return run([*cmd, *args], env=env, what=what or "git " + " ".join(args)).stdout.strip()


def make_snapshot(repo: Path, working_tree: bool) -> Tuple[str, str]:
    """A bare repository at `repo` whose HEAD (branch main) is HEAD of the checkout, or a commit of its
    working tree on top of it. Only `repo` is written. Returns (commit, description)."""
    git("init", "-q", "--bare", str(repo))
    git("fetch", "-q", "--no-tags", str(ROOT), "HEAD", git_dir=repo, what="git fetch HEAD of the checkout")
    git("update-ref", f"refs/heads/{SNAPSHOT_BRANCH}", "FETCH_HEAD", git_dir=repo)
    git("symbolic-ref", "HEAD", f"refs/heads/{SNAPSHOT_BRANCH}", git_dir=repo)
    head = git("rev-parse", "HEAD", git_dir=repo)
    if not working_tree:
        return head, f"HEAD {head[:7]} of {ROOT}"
    exclude = ROOT / ".git" / "info" / "exclude"
    if exclude.is_file():
        (repo / "info").mkdir(exist_ok=True)
        shutil.copy(exclude, repo / "info" / "exclude")
    # The checkout is only read: index and objects are the snapshot's own.
    git("read-tree", SNAPSHOT_BRANCH, git_dir=repo, work_tree=ROOT)
    git("add", "-A", git_dir=repo, work_tree=ROOT, what="git add -A (working tree into the snapshot)")
    git("-c", "user.name=colab rehearsal", "-c", "user.email=colab-rehearsal@localhost", "commit", "-q",
        "--no-verify", "--allow-empty", "-m", "colab rehearsal: the working tree", git_dir=repo,
        work_tree=ROOT)
    commit = git("rev-parse", "HEAD", git_dir=repo)
    changed = git("diff", "--name-only", head, commit, git_dir=repo).splitlines()
    return commit, f"working tree of {ROOT} ({len(changed)} files differ from HEAD {head[:7]}), commit {commit[:7]}"


def git_config_env(tmp: Path, url: str, repo: Path) -> Dict[str, str]:
    """Environment variables under which git fetches `url` from `repo` and nothing from the network."""
    cfg = tmp / "gitconfig"
    cfg.write_text(f'[url "{repo}"]\n\tinsteadOf = {url}\n[advice]\n\tdetachedHead = false\n')
    env = {"GIT_CONFIG_GLOBAL": str(cfg), "GIT_CONFIG_NOSYSTEM": "1", "GIT_ALLOW_PROTOCOL": "file",
           "GIT_TERMINAL_PROMPT": "0"}
    version = tuple(int(x) for x in re.findall(r"\d+", run(["git", "--version"]).stdout)[:2])
    if version < (2, 32):  # no GIT_CONFIG_GLOBAL before git 2.32: git reads $HOME/.gitconfig
        home = tmp / "home"
        home.mkdir(exist_ok=True)
        shutil.copy(cfg, home / ".gitconfig")
        env["HOME"] = str(home)
    return env


# ------------------------------------------------------------------ the environment

def make_venv(venv: Path, python: str, torch_spec: str, reuse: bool) -> Tuple[Dict[str, Any], bool]:
    spec = json.dumps({"python": python, "torch": torch_spec, "packages": COLAB_PACKAGES})
    marker = venv / "colab-rehearsal-spec.json"
    vpy = venv / "bin" / "python"
    reused = reuse and marker.is_file() and marker.read_text() == spec and vpy.exists()
    if reused:
        if run([vpy, "-m", "pip", "show", "-q", "retnet_mini"], check=False).returncode == 0:
            run([vpy, "-m", "pip", "uninstall", "-y", "-q", "retnet_mini"], what="pip uninstall retnet_mini")
    else:
        if venv.exists():
            shutil.rmtree(venv)
        run([python, "-m", "venv", venv], what=f"{python} -m venv {venv}")
        run([vpy, "-m", "pip", "install", "-q", *torch_spec.split()], what=f"pip install {torch_spec}")
        run([vpy, "-m", "pip", "install", "-q", *COLAB_PACKAGES], what="pip install " + " ".join(COLAB_PACKAGES))
        marker.write_text(spec)
    info = json.loads(run([vpy, "-c", f"NAMES = {NOT_IN_COLAB_ENV!r}\n" + ENV_INFO], cwd=venv).stdout)
    return info, reused


def install_stub(purelib: Path, ipython_dir: Path) -> Path:
    colab = purelib / "google" / "colab"  # `google` stays a namespace package, as in Colab
    colab.mkdir(parents=True, exist_ok=True)
    (colab / "__init__.py").write_text(STUB_COLAB)
    (colab / "output.py").write_text(STUB_OUTPUT)
    startup = ipython_dir / "profile_default" / "startup"
    startup.mkdir(parents=True, exist_ok=True)
    (startup / "00-google-colab.py").write_text(STARTUP)
    return colab


def kernel_env(venv: Path, tmp: Path, git_env: Dict[str, str]) -> Dict[str, str]:
    """The environment of the driver and so of every kernel: nothing of the checkout or the user's setup."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "VIRTUAL_ENV", "MPLBACKEND",
                        "JUPYTER_PATH", "JUPYTER_CONFIG_PATH", "CONDA_PREFIX", "PYTHONSAFEPATH")}
    env.update(git_env)
    env.update({
        "PATH": f"{venv / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}",
        "VIRTUAL_ENV": str(venv),
        "IPYTHONDIR": str(tmp / "ipython"),  # holds the startup file that imports google.colab
        "JUPYTER_DATA_DIR": str(tmp / "jupyter" / "data"),  # no user kernelspec can replace the venv's
        "JUPYTER_CONFIG_DIR": str(tmp / "jupyter" / "config"),
        "JUPYTER_RUNTIME_DIR": str(tmp / "jupyter" / "runtime"),
        "MPLCONFIGDIR": str(tmp / "matplotlib"),
        "RETNET_MINI_CACHE": str(tmp / "cache"),  # a fresh Colab has no cached corpus
        "PYDEVD_DISABLE_FILE_VALIDATION": "1",  # the debugger's frozen-modules warning at kernel start
        "PIP_NO_INPUT": "1",
    })
    return env


# ------------------------------------------------------------------ the driver (runs in the environment)

def known_widget_models() -> set:
    """(module, version, name) of every widget model this ipywidgets provides (its front end has them)."""
    import ipywidgets  # noqa: F401  (registers every widget class)
    from ipywidgets import Widget

    seen, todo, known = set(), [Widget], set()
    while todo:
        cls = todo.pop()
        for sub in cls.__subclasses__():
            if sub not in seen:
                seen.add(sub)
                todo.append(sub)
                traits = sub.class_traits()
                try:
                    known.add(tuple(traits[t].default_value for t in
                                    ("_model_module", "_model_module_version", "_model_name")))
                except KeyError:
                    pass
    return known


DEPENDENCIES = ["torch", "ipywidgets", "matplotlib", "numpy", "tqdm"]  # in the venv before the install cell


def dist_info(vpy: str) -> Optional[Dict[str, Any]]:
    code = f"NAMES = {DEPENDENCIES!r}\n" + DIST_INFO
    return json.loads(run([vpy, "-c", code], cwd=Path(tempfile.gettempdir())).stdout)


def inside(path: Optional[str], folder: str) -> bool:
    if not path:
        return False
    p, f = os.path.realpath(path), os.path.realpath(folder)
    return p == f or p.startswith(f + os.sep)


def check_package(job: Dict[str, Any], info: Optional[Dict[str, Any]], problems: List[str]) -> Dict[str, Any]:
    """The installed package: there, from repository.url at the snapshot's commit, in the venv, complete."""
    if info is None:
        problems.append("the install cell did not install retnet_mini (`pip show retnet_mini` finds nothing)")
        return {}
    shown = run([job["python"], "-m", "pip", "show", "retnet_mini"], check=False)
    if shown.returncode != 0:
        problems.append(f"`pip show retnet_mini` failed: {shown.stdout.strip()[-300:]}")
    du = info.get("direct_url") or {}
    commit = (du.get("vcs_info") or {}).get("commit_id")
    if du.get("url", "").rstrip("/") != job["url"] or (du.get("vcs_info") or {}).get("vcs") != "git":
        problems.append(f"retnet_mini was not installed from git+{job['url']} (direct_url.json: {du})")
    if commit != job["commit"]:
        problems.append(f"retnet_mini was installed at commit {commit}, the snapshot is {job['commit']}")
    if not inside(info["location"], job["purelib"]):
        problems.append(f"retnet_mini is installed in {info['location']}, not in the venv ({job['purelib']})")
    changed = {n: (job["versions"].get(n), info["others"].get(n)) for n in DEPENDENCIES
               if job["versions"].get(n) != info["others"].get(n)}
    if changed:  # pip must find every dependency satisfied (Colab keeps its torch and ipywidgets 7)
        problems.append("the install changed dependencies: "
                        + ", ".join(f"{n} {a} -> {b}" for n, (a, b) in changed.items()))
    files = {f for f in info["files"] if f.startswith("retnet_mini/") and "__pycache__" not in f}
    missing = sorted(set(job["package_files"]) - files)
    if missing:
        problems.append(f"{len(missing)} files of retnet_mini/ are not in the installed package: "
                        + ", ".join(missing[:10]))
    return {"version": info["version"], "location": info["location"], "commit": commit, "unchanged": DEPENDENCIES,
            "files": len(files), "expected_files": len(job["package_files"]), "missing": missing}


def first_error(cell: Any) -> Tuple[str, str]:
    for out in cell.get("outputs", []):
        if out.get("output_type") == "error":
            tb = "\n".join(re.sub(r"\x1b\[[0-9;]*m", "", line) for line in out.get("traceback", []))
            return f"{out.get('ename')}: {out.get('evalue')}", tb
    return "", ""


def views(cell: Any) -> List[str]:
    return [o["data"][WIDGET_VIEW].get("model_id") for o in cell.get("outputs", [])
            if WIDGET_VIEW in o.get("data", {})]


def execute_notebook(job: Dict[str, Any], path: Path, known: set) -> Dict[str, Any]:
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    committed = nbformat.read(path, as_version=4)  # the snapshot's stored outputs, for comparison
    res: Dict[str, Any] = {"notebook": path.name, "ok": False, "cells": len(nb.cells),
                           "code_cells": sum(c.cell_type == "code" for c in nb.cells), "problems": []}
    problems = res["problems"]
    first = nb.cells[0] if nb.cells else None
    if not (first is not None and first.cell_type == "code" and "google.colab" in first.source
            and f"git+{job['url']}" in first.source):
        problems.append(f"cell 0 is not the Colab install cell for git+{job['url']}")
    # As a learner's fresh run: no stored outputs, no stored widget state.
    nb.metadata.pop("widgets", None)
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    probe = nbformat.v4.new_code_cell(CHECK_CELL)
    nb.cells.append(probe)  # nbclient writes outputs through nb.cells[index]; removed after the run
    client = NotebookClient(nb, timeout=job["cell_timeout"], startup_timeout=120, kernel_name="python3",
                            resources={"metadata": {"path": str(path.parent)}}, record_timing=False)
    start = time.perf_counter()
    failed_at, check, cell_seconds = None, None, []
    try:
        with client.setup_kernel():
            for index, cell in enumerate(nb.cells[:-1]):
                t_cell = time.perf_counter()
                try:
                    client.execute_cell(cell, index, execution_count=client.code_cells_executed + 1)
                    if cell.cell_type == "code":
                        cell_seconds.append((index, round(time.perf_counter() - t_cell, 1)))
                except Exception as err:  # CellExecutionError, CellTimeoutError, DeadKernelError
                    failed_at = index
                    msg, tb = first_error(cell)
                    res["error"] = {"cell": index, "message": msg or f"{type(err).__name__}: {err}"[:500],
                                    "source": cell.source.splitlines()[:3], "traceback": tb[-3000:]}
                    break
            if failed_at is None:
                client.execute_cell(probe, len(nb.cells) - 1)
                text = "".join(o.get("text", "") for o in probe.outputs if o.get("output_type") == "stream")
                line = next((ln for ln in text.splitlines() if ln.startswith(MARK)), None)
                check = json.loads(line[len(MARK):]) if line else None
            client.set_widgets_metadata()
    except Exception as err:  # the kernel did not start, or died outside a cell
        if "error" not in res:
            res["error"] = {"cell": failed_at, "message": f"{type(err).__name__}: {err}"[:500]}
    res["seconds"] = round(time.perf_counter() - start, 1)
    res["slowest_cells"] = sorted(cell_seconds, key=lambda x: -x[1])[:3]
    nb.cells.pop()  # the probe
    nbformat.write(nb, Path(job["out"]) / path.name)

    if "error" in res:
        e = res["error"]
        problems.append(f"cell {e['cell']}: {e['message']}")
    code = [c for c in nb.cells if c.cell_type == "code"]
    res["executed"] = sum(c.get("execution_count") is not None for c in code)
    if failed_at is None and res["executed"] != len(code):
        problems.append(f"{len(code) - res['executed']} code cells did not run")
    # Errors the executor let through: only cells tagged raises-exception may show one.
    for i, cell in enumerate(nb.cells):
        if i != failed_at and first_error(cell)[0] and "raises-exception" not in cell.metadata.get("tags", []):
            problems.append(f"cell {i} shows an error: {first_error(cell)[0]}")
    install_out = "".join(o.get("text", "") for o in (first.outputs if first is not None else [])
                          if o.get("output_type") == "stream")
    if re.search(r"^ERROR", install_out, re.M):
        problems.append("the install cell's pip reported: "
                        + " | ".join(ln for ln in install_out.splitlines() if ln.startswith("ERROR"))[:500])
    res["stderr_cells"] = [i for i, c in enumerate(nb.cells) if i and any(
        o.get("output_type") == "stream" and o.get("name") == "stderr" for o in c.get("outputs", []))]

    # Widgets: the same cells show views as in the committed notebook; every view's model is in the
    # saved state; every model of that state exists in the front end of this ipywidgets.
    state = nb.metadata.get("widgets", {}).get(WIDGET_STATE, {}).get("state", {})
    res["widget_views"] = 0
    if failed_at is None:
        for i, (cell, old) in enumerate(zip(nb.cells, committed.cells)):
            got, want = views(cell), views(old)
            res["widget_views"] += len(got)
            if len(got) < len(want):
                problems.append(f"cell {i} shows {len(got)} widget views, the committed notebook {len(want)}")
            for mid in got:
                if mid not in state:
                    problems.append(f"cell {i}: widget view {mid} has no model in the saved widget state")
        models: Dict[str, int] = {}
        for m in state.values():
            key = (m.get("model_module"), m.get("model_module_version"), m.get("model_name"))
            models[key[2]] = models.get(key[2], 0) + 1
            if key not in known:
                problems.append(f"widget model {key} is not in ipywidgets {job['ipywidgets']}'s front end")
        res["widget_models"] = dict(sorted(models.items()))
    if check is not None:
        res["kernel"] = check
        if not check["colab"]:
            problems.append("google.colab was not in sys.modules in the kernel")
        if os.path.realpath(check["prefix"]) != os.path.realpath(job["venv"]):
            problems.append(f"the kernel ran {check['executable']} (prefix {check['prefix']}), "
                            "not the venv's python")
        if inside(check["cwd"], job["root"]):
            problems.append(f"the kernel ran in {check['cwd']}, inside the checkout")
        if check["ipywidgets"] not in (None, job["ipywidgets"]):
            problems.append(f"the kernel imported ipywidgets {check['ipywidgets']}")
        for entry in check["sys_path"]:
            if inside(entry or check["cwd"], job["root"]) and not inside(entry, job["venv"]):
                problems.append(f"sys.path holds {entry!r}, inside the checkout")
        ex = check.get("explorers") or {}
        res["explorers"] = ex
        problems.extend(f"explorer: {err}" for err in ex.get("errors", [])[:5])
        if ex.get("skipped"):
            res["notes"] = [f"{ex['found']} frame explorers not switched: {ex['skipped']}"]
        elif ex.get("found") and not ex.get("checked"):
            problems.append(f"{ex['found']} frame explorers, none switches frames in the kernel under "
                            f"ipywidgets {job['ipywidgets']}")
        if not check["modules"]:
            problems.append("the notebook imported nothing from retnet_mini")
        for name, file in check["modules"].items():
            if file is not None and not inside(file, job["purelib"]):
                problems.append(f"{name} was imported from {file}, not from the venv")
    elif failed_at is None:
        problems.append("the check after the last cell printed nothing")
    res["ok"] = not problems
    return res


def driver(job_path: str) -> int:
    job = json.loads(Path(job_path).read_text())
    import ipywidgets

    job["ipywidgets"] = ipywidgets.__version__
    known = known_widget_models()
    results, package, package_problems = [], {}, []
    for i, name in enumerate(job["notebooks"]):
        res = execute_notebook(job, Path(job["notebook_dir"]) / name, known)
        if i == 0:  # the first install cell ran: the package must be there now, whatever the notebook did
            package = check_package(job, dist_info(job["python"]), package_problems)
            res["problems"] += package_problems
            res["ok"] = res["ok"] and not package_problems
        results.append(res)
        status = "PASS" if res["ok"] else "FAIL"
        extra = f", {res['widget_views']} widget views" if res.get("widget_views") else ""
        ex = res.get("explorers") or {}
        if ex.get("checked"):
            extra += (f", {ex['checked']} explorer{'s' if ex['checked'] > 1 else ''} switched through "
                      f"{ex['positions']} positions")
        log(f"  {status} {name:<32} {res['seconds']:6.1f} s  {res['cells']:3d} cells "
            f"({res.get('executed', 0)}/{res['code_cells']} code cells ran{extra})")
        if i == 0 and package:
            log(f"       installed: retnet_mini {package['version']} from git+{job['url']} "
                f"@ {str(package['commit'])[:7]} into {package['location']} "
                f"({package['files']}/{package['expected_files']} files of retnet_mini/); "
                f"{', '.join(package['unchanged'])} unchanged")
        if res["seconds"] > 60 and res["slowest_cells"]:
            log("       slowest cells: " + ", ".join(f"{i} ({t:.0f} s)" for i, t in res["slowest_cells"]))
        for p in res.get("notes", []):
            log(f"       note: {p}")
        for p in res["problems"]:
            log(f"       {p}")
        if res.get("error", {}).get("traceback"):
            log("       " + "\n       ".join(res["error"]["traceback"].splitlines()[-6:]))
    final = dist_info(job["python"])  # later install cells reinstalled it: still the snapshot's commit?
    final_commit = ((final or {}).get("direct_url") or {}).get("vcs_info", {}).get("commit_id")
    Path(job["result"]).write_text(json.dumps({"notebooks": results, "package": package,
                                               "final_commit": final_commit,
                                               "ipywidgets": job["ipywidgets"]}, indent=1))
    return 0


# ------------------------------------------------------------------ main

def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--working-tree", action="store_true",
                    help="rehearse the working tree (tracked and untracked files git does not ignore), "
                         "not HEAD")
    ap.add_argument("--venv", type=Path, help="make (or reuse, when this script made it with the same "
                    "packages) the environment here instead of a fresh one in a temporary folder; "
                    "retnet_mini is uninstalled from it first")
    ap.add_argument("--python", default=sys.executable, help="the Python that creates the environment")
    ap.add_argument("--torch-spec", default=os.environ.get("TORCH_SPEC") or "torch==2.13.0",
                    help="what pip installs for torch first (default: $TORCH_SPEC or torch==2.13.0)")
    ap.add_argument("--cell-timeout", type=int, default=600, help="seconds per cell (default 600)")
    ap.add_argument("--out", type=Path, default=ROOT / "_build" / "colab",
                    help="where the executed notebooks and report.json go (default _build/colab)")
    ap.add_argument("--keep", action="store_true", help="keep the temporary folder")
    ap.add_argument("notebooks", nargs="*", help="only these notebooks of _toc.yml (default: all)")
    ap.add_argument("--driver", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.driver:
        return driver(args.driver)

    t0 = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix="colab-rehearsal-"))
    try:
        return rehearse(args, tmp, t0)
    finally:
        if args.keep:
            log(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


def rehearse(args: argparse.Namespace, tmp: Path, t0: float) -> int:
    if inside(str(tmp), str(ROOT)):
        raise SystemExit(f"colab rehearsal FAILED: the temporary folder {tmp} is inside the checkout")
    repo = tmp / "repo.git"
    commit, source = make_snapshot(repo, args.working_tree)
    show = lambda p: git("show", f"{commit}:{p}", git_dir=repo)  # noqa: E731
    url = repository_url(show("_config.yml"))
    ref = repository_ref(show("_config.yml"))
    if ref != SNAPSHOT_BRANCH:
        # A release commit's install cells pin its tag (README, "Releasing"): rehearse the commit as it will
        # be once tagged, with the ref pointing at it in the snapshot.
        git("update-ref", f"refs/tags/{ref}", commit, git_dir=repo)
        source += f", tagged {ref} in the snapshot"
    log(f"colab rehearsal of git+{url}" + ("" if ref == SNAPSHOT_BRANCH else f"@{ref}"))
    log(f"  source: {source}")
    dirty = git("status", "--porcelain", "--untracked-files=no", git_dir=ROOT / ".git", work_tree=ROOT)
    if not args.working_tree and dirty:
        log(f"  note: {len(dirty.splitlines())} tracked files have uncommitted changes, not rehearsed "
            "(--working-tree rehearses them)")

    entries = toc_files(show("_toc.yml"))
    tracked = set(git("ls-tree", "-r", "--name-only", commit, git_dir=repo).splitlines())
    notebooks = [e + ".ipynb" for e in entries if e + ".ipynb" in tracked]
    if args.notebooks:
        wanted = {Path(n).stem for n in args.notebooks}
        unknown = wanted - {Path(n).stem for n in notebooks}
        if unknown:
            raise SystemExit(f"colab rehearsal FAILED: not notebooks of _toc.yml: {sorted(unknown)}")
        notebooks = [n for n in notebooks if Path(n).stem in wanted]
    if not notebooks:
        raise SystemExit("colab rehearsal FAILED: _toc.yml lists no notebook")
    nb_dir = tmp / "notebooks"
    nb_dir.mkdir()
    for n in notebooks:
        (nb_dir / Path(n).name).write_bytes(subprocess.run(["git", f"--git-dir={repo}", "show", f"{commit}:{n}"],
                                                           stdout=subprocess.PIPE, check=True).stdout)
    others = [e for e in entries if e + ".ipynb" not in tracked]
    log(f"  notebooks: {len(notebooks)} of _toc.yml, copied to {nb_dir}"
        + (f" (not notebooks: {', '.join(others)})" if others else ""))

    t_env = time.perf_counter()
    venv = (args.venv.resolve() if args.venv else tmp / "venv")
    info, reused = make_venv(venv, args.python, args.torch_spec, reuse=args.venv is not None)
    v = info["versions"]
    log(f"  venv: {venv} ({'reused, retnet_mini removed' if reused else 'fresh'}; python {info['python']}): "
        + ", ".join(f"{k} {v[k]}" for k in ("torch", "ipywidgets", "matplotlib", "numpy", "tqdm",
                                             "ipykernel", "ipython", "nbclient"))
        + f"  [{time.perf_counter() - t_env:.0f} s]")
    if v["ipywidgets"] != IPYWIDGETS_COLAB:
        raise SystemExit(f"colab rehearsal FAILED: the venv has ipywidgets {v['ipywidgets']}, "
                         f"not Colab's {IPYWIDGETS_COLAB}")
    if info["present"]:
        raise SystemExit(f"colab rehearsal FAILED: the venv already has {info['present']} before any notebook ran")
    stub = install_stub(Path(info["purelib"]), tmp / "ipython")
    log(f"  google.colab: stub {stub}, imported at kernel start by $IPYTHONDIR/profile_default/startup")

    git_env = git_config_env(tmp, url, repo)
    env = kernel_env(venv, tmp, git_env)
    remote = run(["git", "ls-remote", url, "HEAD"], env=env, cwd=tmp, what=f"git ls-remote {url} (rewritten)")
    if commit not in remote.stdout:
        raise SystemExit(f"colab rehearsal FAILED: git ls-remote {url} gave {remote.stdout!r}, not {commit}")
    log(f"  git: {url} -> {repo} (url.insteadOf in {git_env['GIT_CONFIG_GLOBAL']}; "
        f"GIT_ALLOW_PROTOCOL=file, ~/.gitconfig not read)")

    out = args.out.resolve()
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    package_files = sorted(f for f in tracked if f.startswith("retnet_mini/"))
    job = {"url": url, "commit": commit, "root": str(ROOT), "venv": str(venv), "purelib": info["purelib"],
           "python": str(venv / "bin" / "python"), "notebook_dir": str(nb_dir),
           "notebooks": [Path(n).name for n in notebooks], "cell_timeout": args.cell_timeout,
           "out": str(out), "result": str(tmp / "result.json"), "package_files": package_files,
           "versions": v}
    (tmp / "job.json").write_text(json.dumps(job, indent=1))
    t_nb = time.perf_counter()
    p = subprocess.run([str(venv / "bin" / "python"), str(Path(__file__).resolve()), "--driver",
                        str(tmp / "job.json")], env=env, cwd=tmp)
    if p.returncode != 0 or not (tmp / "result.json").exists():
        raise SystemExit(f"colab rehearsal FAILED: the driver exited with {p.returncode}")
    result = json.loads((tmp / "result.json").read_text())
    nb_seconds = time.perf_counter() - t_nb
    result.update({"url": url, "commit": commit, "source": source, "venv": info})
    (out / "report.json").write_text(json.dumps(result, indent=1))

    results, package = result["notebooks"], result["package"]
    failed = [r["notebook"] for r in results if not r["ok"]]
    also = ""
    if result["final_commit"] != commit:
        also = f"; after the last notebook the installed commit is {result['final_commit']}, not {commit[:7]}"
    cells = sum(r["cells"] for r in results)
    code = sum(r.get("executed", 0) for r in results)
    views = sum(r.get("widget_views", 0) for r in results)
    total = time.perf_counter() - t0
    log(f"  notebooks: {nb_seconds:.0f} s; widget views: {views} "
        f"({', '.join(sorted({k for r in results for k in r.get('widget_models', {})}))}); "
        f"executed notebooks and report.json in {out}")
    if failed or also:
        log(f"colab rehearsal FAILED: {len(failed)} of {len(results)} notebooks failed"
            f"{': ' + ', '.join(failed) if failed else ''}{also}; total {total:.0f}s")
        return 1
    log(f"colab rehearsal OK: {len(results)} notebooks, {cells} cells ({code} code cells ran), package from "
        f"git+{url} installed in the venv (retnet_mini {package['version']} @ {commit[:7]}, "
        f"{package['files']} files), ipywidgets {result['ipywidgets']}; total {total:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
