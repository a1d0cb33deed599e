#!/usr/bin/env python
"""Fetch, once, the CDN packages the built site loads, so the browser test can answer them offline.

The site loads a few scripts from versioned jsdelivr `/npm/` URLs (MathJax, require.js and the ipywidgets
html-manager; see `mathjax_path` and `nb_ipywidgets_js` in _config.yml). This script reads those URLs from
_config.yml and stores each package, as `npm pack` gives it, under .ci-cache/npm/<name>@<version>/package/.
The browser test answers https://cdn.jsdelivr.net/npm/<name>@<version>/<path> from there.
"""

from __future__ import annotations

import re
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path
from typing import Dict, List, Tuple

import yaml

ROOT = Path(__file__).resolve().parents[2]
CACHE = ROOT / ".ci-cache" / "npm"
JSDELIVR_NPM = re.compile(r"^https://cdn\.jsdelivr\.net/npm/((?:@[^/@]+/)?[^/@]+)@([^/]+)/(.*)$")


def cdn_urls(config_path: Path = ROOT / "_config.yml") -> List[str]:
    """The jsdelivr URLs the site loads, as configured in _config.yml."""
    sphinx_config: Dict = (yaml.safe_load(config_path.read_text()).get("sphinx") or {}).get("config") or {}
    urls = [sphinx_config.get("mathjax_path", "")]
    urls += list((sphinx_config.get("nb_ipywidgets_js") or {}).keys())
    return [u for u in urls if u]


def packages(urls: List[str]) -> List[Tuple[str, str]]:
    """(name, exact version) of every jsdelivr /npm/ URL; an unversioned or ranged URL is an error."""
    found = []
    for url in urls:
        match = JSDELIVR_NPM.match(url)
        if not match:
            raise SystemExit(f"not a versioned jsdelivr /npm/ URL, the offline browser test cannot answer it: {url}")
        name, version, _ = match.groups()
        if not re.fullmatch(r"\d+\.\d+\.\d+", version):
            raise SystemExit(f"pin an exact version in {url} (got {version!r})")
        if (name, version) not in found:
            found.append((name, version))
    return found


def package_dir(name: str, version: str) -> Path:
    """Where the unpacked package lives: .ci-cache/npm/<name>@<version>/package."""
    return CACHE / f"{name}@{version}" / "package"


def fetch(name: str, version: str) -> Path:
    """`npm pack` one package into the cache (no-op when already there)."""
    target = package_dir(name, version)
    if (target / "package.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        result = subprocess.run(["npm", "pack", f"{name}@{version}", "--pack-destination", tmp, "--silent"],
                                capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise SystemExit(f"npm pack {name}@{version} failed:\n{result.stderr}")
        tarball = Path(tmp) / result.stdout.strip().splitlines()[-1]
        with tarfile.open(tarball) as tar:
            if hasattr(tarfile, "data_filter"):
                tar.extractall(target.parent, filter="data")
            else:  # Python < 3.11.4
                tar.extractall(target.parent)
    if not (target / "package.json").is_file():
        raise SystemExit(f"{name}@{version}: unexpected tarball layout (no package/package.json)")
    return target


def main() -> int:
    for name, version in packages(cdn_urls()):
        path = fetch(name, version)
        print(f"{name}@{version}: {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
