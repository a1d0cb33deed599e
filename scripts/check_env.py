#!/usr/bin/env python
"""Exit 0 when this Python already has everything requirements.txt asks for, else 1 (and say what is missing).

`make` runs it before `pip install -r requirements.txt`, so a ready environment is used as it is: no
network, no reinstall. Understands the lines requirements.txt uses: `name==version`, bare `name`, `-e .`.
"""

from __future__ import annotations

import importlib.metadata as metadata
import importlib.util
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def missing(requirements: Path = ROOT / "requirements.txt") -> list[str]:
    problems = []
    for raw in requirements.read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        if line in ("-e .", "-e ./", "."):
            spec = importlib.util.find_spec("retnet_mini")
            if spec is None or not spec.origin or ROOT not in Path(spec.origin).resolve().parents:
                problems.append(f"{line} (retnet_mini from {ROOT})")
            continue
        match = re.fullmatch(r"([A-Za-z0-9_.\-\[\]]+?)(?:\[[^\]]*\])?\s*(?:==\s*([^\s;]+))?", line)
        if not match:
            problems.append(f"{line} (not understood here: let pip decide)")
            continue
        name, version = match.groups()
        try:
            installed = metadata.version(name)
        except metadata.PackageNotFoundError:
            problems.append(f"{line} (not installed)")
            continue
        if version and installed != version:
            problems.append(f"{line} (installed: {installed})")
    return problems


if __name__ == "__main__":
    problems = missing()
    for problem in problems:
        print(f"needs: {problem}")
    sys.exit(1 if problems else 0)
