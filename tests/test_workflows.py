"""The GitHub Actions workflows in .github/workflows/, checked here since they can only run on GitHub.

Each file is validated against GitHub's workflow schema with check-jsonschema (pinned in requirements.txt),
whose copy of the schema ships inside the package (`--builtin-schema`): no network. Broken copies must fail
that validation, so that a pass means something. Then what the schema cannot know: the workflows run the
README's test command as `.ci/run` does, on the Python and torch the project pins, publish the site that
command built, and deploy it from main with the permissions GitHub Pages needs.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
WORKFLOWS = ROOT / ".github" / "workflows"
FILES = sorted(WORKFLOWS.glob("*.yml"))
VALIDATOR = [sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.github-workflows"]


def validate(*paths: Path) -> subprocess.CompletedProcess:
    return subprocess.run([*VALIDATOR, *map(str, paths)], capture_output=True, text=True, timeout=120)


def load(name: str) -> dict:
    workflow = yaml.safe_load((WORKFLOWS / name).read_text())
    # YAML 1.1 (PyYAML) reads the key `on` as True.
    workflow["on"] = workflow.pop(True, workflow.get("on"))
    return workflow


def steps(workflow: dict) -> list[dict]:
    return [step for job in workflow["jobs"].values() for step in job.get("steps", [])]


def test_the_two_workflows_are_there():
    assert {p.name for p in FILES} == {"pages.yml", "tests.yml"}


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_workflow_is_valid(path):
    done = validate(path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "ok -- validation done" in done.stdout


# Each a small, real mistake in a copy of a workflow: a misspelled key, a wrong value, a step that both
# runs and uses, a job without runs-on, an unknown event.
BROKEN = [
    ("pages.yml", "    runs-on: ubuntu-24.04\n", "    runs_on: ubuntu-24.04\n"),
    ("pages.yml", "      id-token: write\n", "      id-token: admin\n"),
    ("pages.yml", "  cancel-in-progress: false\n", "  cancel-in-progress: sometimes\n"),
    ("tests.yml", "      - name: make test (.ci/run)\n        run: bash .ci/run\n",
     "      - name: make test (.ci/run)\n        uses: actions/checkout@v4\n        run: bash .ci/run\n"),
    ("tests.yml", "    runs-on: ubuntu-24.04\n", ""),
    ("tests.yml", "  pull_request:\n", "  pull-request:\n"),
]


@pytest.mark.parametrize("name, old, new", BROKEN, ids=[f"{n}:{o.strip()[:24]}" for n, o, _ in BROKEN])
def test_the_validator_rejects_a_broken_workflow(tmp_path, name, old, new):
    text = (WORKFLOWS / name).read_text()
    assert text.count(old) == 1, f"{name}: the text to break is not there once: {old!r}"
    broken = tmp_path / name
    broken.write_text(text.replace(old, new))
    done = validate(broken)
    assert done.returncode == 1 and "Schema validation errors" in done.stdout + done.stderr, done.stdout


def test_tests_workflow_runs_the_readme_test_command_on_pull_requests():
    workflow = load("tests.yml")
    assert "pull_request" in workflow["on"] and "workflow_call" in workflow["on"]
    runs = [step.get("run", "").strip() for step in steps(workflow)]
    assert "bash .ci/run" in runs
    # .ci/run is the README's set-up and test command: `make env` then `make test`.
    ci = (ROOT / ".ci" / "run").read_text()
    assert "make --no-print-directory env" in ci and "make --no-print-directory test" in ci
    readme = (ROOT / "README.md").read_text()
    assert "make book   #" in readme and "make test   #" in readme


def test_tests_workflow_installs_what_the_makefile_pins():
    (job,) = load("tests.yml")["jobs"].values()
    makefile = (ROOT / "Makefile").read_text()
    pin = re.search(r"^TORCH_SPEC \?= (\S+)$", makefile, re.M).group(1)
    # The same torch as on the project's machines, from PyTorch's CPU index (else pip takes a CUDA build).
    assert job["env"]["TORCH_SPEC"] == f"{pin} --index-url https://download.pytorch.org/whl/cpu"
    (python,) = [s["with"]["python-version"] for s in job["steps"]
                 if s.get("uses", "").startswith("actions/setup-python@")]
    # A full version: the corpus the notebooks print facts about changes between Python releases.
    assert re.fullmatch(r"3\.\d+\.\d+", str(python)), python
    assert job["timeout-minutes"] <= 360


def test_tests_workflow_uploads_the_site_after_testing_it():
    names = [s.get("uses", s.get("run", "")).split("@")[0].strip() for s in steps(load("tests.yml"))]
    assert names.index("actions/upload-pages-artifact") > names.index("bash .ci/run")
    (upload,) = [s for s in steps(load("tests.yml")) if s.get("uses", "").startswith("actions/upload-pages-artifact@")]
    assert upload["with"]["path"] == "_build/html"
    # `make test` builds that site from the stored outputs (after nbval proved them), not by re-executing.
    config = yaml.safe_load((ROOT / "_config.yml").read_text())
    assert config["execute"]["execute_notebooks"] == "off"


def test_pages_workflow_deploys_main_after_the_tests():
    workflow = load("pages.yml")
    assert workflow["on"]["push"] == {"branches": ["main"]} and "workflow_dispatch" in workflow["on"]
    assert workflow["concurrency"] == {"group": "pages", "cancel-in-progress": False}
    assert workflow["jobs"]["test"] == {"uses": "./.github/workflows/tests.yml"}
    deploy = workflow["jobs"]["deploy"]
    assert deploy["needs"] == "test"
    assert deploy["permissions"] == {"pages": "write", "id-token": "write"}
    assert deploy["environment"]["name"] == "github-pages"
    assert [s["uses"].split("@")[0] for s in deploy["steps"]] == ["actions/deploy-pages"]
    # Nothing else may write: the deploy job alone gets Pages rights.
    assert workflow["permissions"] == {"contents": "read"}


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_every_action_is_pinned_to_a_major_version_and_every_job_has_a_timeout(path):
    workflow = load(path.name)
    for step in steps(workflow):
        if "uses" in step:
            assert re.fullmatch(r"actions/[a-z-]+@v\d+", step["uses"]), step["uses"]
    for name, job in workflow["jobs"].items():
        assert "uses" in job or "timeout-minutes" in job, f"{path.name}: job {name} has no timeout-minutes"
