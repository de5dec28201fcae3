"""Packaging consistency: pinned requirement files, environment.yml, pyproject.toml, README, CI entry points.

Needs only the standard library (PyYAML is used when present, and the fallback parser is checked against it).
"""

from __future__ import annotations

import os
import re
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
REQ_FILES = ("requirements.txt", "requirements-notebook.txt", "requirements-test.txt")
PIN_RE = re.compile(
    r"^(?P<name>[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?)"
    r"(?:\[(?P<extras>[A-Za-z0-9._-]+(?:\s*,\s*[A-Za-z0-9._-]+)*)\])?"
    r"==(?P<version>[0-9][A-Za-z0-9.!]*)$"
)


# ---------------------------------------------------------------------------------------------------- parsing


def _normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _requirement_lines(path: Path) -> list[str]:
    lines = []
    for raw in path.read_text().splitlines():
        line = raw.split(" #", 1)[0].strip() if not raw.lstrip().startswith("#") else ""
        if line:
            lines.append(line)
    return lines


def _pins(lines: list[str], where: str) -> dict[str, tuple[frozenset[str], str]]:
    """{normalized name: (extras, version)} for `name[extras]==version` lines; fails on anything else."""
    pins: dict[str, tuple[frozenset[str], str]] = {}
    for line in lines:
        m = PIN_RE.match(line.replace(" ", ""))
        assert m, f"{where}: not an exact `name==version` pin: {line!r}"
        name = _normalize(m["name"])
        assert name not in pins, f"{where}: {name} listed twice"
        extras = frozenset(_normalize(e) for e in (m["extras"] or "").split(",") if e)
        pins[name] = (extras, m["version"])
    return pins


def _parse_scalar(text: str):
    text = text.strip()
    if text.startswith("[") and text.endswith("]"):
        return [_parse_scalar(t) for t in text[1:-1].split(",") if t.strip()]
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        return text[1:-1]
    return text


def _strip_comment(line: str) -> str:
    # a '#' starts a comment at line start or after whitespace (enough for environment.yml)
    return re.split(r"(?:^|\s)#", line, maxsplit=1)[0].rstrip()


def tiny_yaml_load(text: str):
    """Parse the block-style YAML subset environment.yml uses: mappings, lists, nested `- key:` items."""
    lines = [(len(l) - len(l.lstrip(" ")), l.strip()) for l in map(_strip_comment, text.splitlines()) if l.strip()]
    pos = 0

    def parse_block(indent: int):
        nonlocal pos
        if lines[pos][1].startswith("- ") or lines[pos][1] == "-":
            out: list = []
            while pos < len(lines) and lines[pos][0] == indent and lines[pos][1].startswith("-"):
                item = lines[pos][1][1:].strip()
                pos += 1
                key, sep, rest = item.partition(":")
                if sep and (rest == "" or rest.startswith(" ")) and not item.startswith(("'", '"')):
                    if rest.strip():
                        out.append({key.strip(): _parse_scalar(rest)})
                    else:
                        out.append({key.strip(): parse_block(lines[pos][0]) if pos < len(lines) and lines[pos][0] > indent else None})
                else:
                    out.append(_parse_scalar(item))
            return out
        out_map: dict = {}
        while pos < len(lines) and lines[pos][0] == indent:
            key, _, rest = lines[pos][1].partition(":")
            pos += 1
            if rest.strip():
                out_map[key.strip()] = _parse_scalar(rest)
            elif pos < len(lines) and (lines[pos][0] > indent or lines[pos][1].startswith("-") and lines[pos][0] == indent):
                out_map[key.strip()] = parse_block(lines[pos][0])
            else:
                out_map[key.strip()] = None
        return out_map

    return parse_block(lines[0][0]) if lines else None


def _load_environment():
    text = (ROOT / "environment.yml").read_text()
    try:
        import yaml
    except ImportError:
        return tiny_yaml_load(text)
    return yaml.safe_load(text)


def _env_parts(env) -> tuple[list[str], list[str]]:
    """(conda dependencies as strings, pip dependencies)."""
    conda, pip = [], None
    for dep in env["dependencies"]:
        if isinstance(dep, dict):
            assert set(dep) == {"pip"}, f"unexpected mapping in dependencies: {dep}"
            assert pip is None, "two pip sections"
            pip = [str(p) for p in dep["pip"]]
        else:
            conda.append(str(dep))
    assert pip is not None, "environment.yml has no pip section"
    return conda, pip


def _requirement_pins() -> dict[str, tuple[frozenset[str], str]]:
    pins: dict[str, tuple[frozenset[str], str]] = {}
    for fname in REQ_FILES:
        for name, pin in _pins(_requirement_lines(ROOT / fname), fname).items():
            assert name not in pins, f"{name} is pinned in more than one requirement file"
            pins[name] = pin
    return pins


def _fmt(pins) -> dict[str, str]:
    return {n: f"{n}{'[' + ','.join(sorted(e)) + ']' if e else ''}=={v}" for n, (e, v) in pins.items()}


# ---------------------------------------------------------------------------------------------------- tests


@pytest.mark.parametrize("fname", REQ_FILES)
def test_requirement_files_are_exact_pins(fname):
    lines = _requirement_lines(ROOT / fname)
    assert lines, f"{fname} is empty"
    pins = _pins(lines, fname)
    # a local version such as 2.13.0+cpu exists only on some machines (ENV.md section 3)
    assert all("+" not in v for _, v in pins.values())
    assert len(pins) == len(lines)


def test_environment_yml_mirrors_requirement_files():
    conda, pip = _env_parts(_load_environment())
    assert "python=3.11" in conda and "pip" in conda, conda
    assert "-e ." in pip, "environment.yml pip section must install the package itself (`-e .`)"
    assert not [p for p in pip if p.startswith("-r")], "list pins literally, not via -r"
    env_pins = _fmt(_pins([p for p in pip if p != "-e ."], "environment.yml pip section"))
    req_pins = _fmt(_requirement_pins())
    missing = sorted(req_pins[n] for n in req_pins.keys() - env_pins.keys())
    extra = sorted(env_pins[n] for n in env_pins.keys() - req_pins.keys())
    differ = sorted(f"{req_pins[n]} (requirements) vs {env_pins[n]} (environment.yml)"
                    for n in req_pins.keys() & env_pins.keys() if req_pins[n] != env_pins[n])
    assert not (missing or extra or differ), (
        f"missing from environment.yml: {missing}; only in environment.yml: {extra}; different: {differ}")


def test_tiny_yaml_parser_agrees_with_pyyaml():
    yaml = pytest.importorskip("yaml")
    text = (ROOT / "environment.yml").read_text()
    assert tiny_yaml_load(text) == yaml.safe_load(text)


def test_pyproject_reads_the_requirement_files():
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())
    project, st = meta["project"], meta["tool"]["setuptools"]
    assert set(project["dynamic"]) >= {"dependencies", "optional-dependencies"}
    assert "dependencies" not in project and "optional-dependencies" not in project
    assert st["dynamic"]["dependencies"] == {"file": ["requirements.txt"]}
    assert st["dynamic"]["optional-dependencies"] == {
        "notebook": {"file": ["requirements-notebook.txt"]},
        "test": {"file": ["requirements-test.txt"]},
    }
    assert project["requires-python"] == ">=3.11"
    assert project["scripts"]["armt-viz"] == "armt_viz.cli:main"
    assert st["packages"]["find"]["include"] == ["armt_viz*"]
    ini = meta["tool"]["pytest"]["ini_options"]
    assert {m.split(":")[0] for m in ini["markers"]} >= {"ui", "slow", "notebook"}
    assert not any(f.strip().startswith("error") for f in ini.get("filterwarnings", []))


def _first_fenced_block(markdown: str) -> list[str]:
    m = re.search(r"^```[^\n]*\n(.*?)^```", markdown, flags=re.M | re.S)
    assert m, "README.md has no fenced code block"
    return [l.strip() for l in m.group(1).splitlines() if l.strip() and not l.strip().startswith("#")]


def test_readme_starts_with_make_demo_and_make_test():
    commands = _first_fenced_block((ROOT / "README.md").read_text())
    assert commands[:2] == ["make demo", "make test"]
    assert commands == ["make demo", "make test"], f"first code block should hold exactly these two: {commands}"


def test_ci_entry_point():
    run = ROOT / ".ci" / "run"
    text = run.read_text()
    assert os.access(run, os.X_OK), ".ci/run must be executable"
    assert text.startswith("#!") and "set -euo pipefail" in text
    commands = [l.strip() for l in text.splitlines() if l.strip() and not l.lstrip().startswith("#")]
    assert commands.index("make setup") < commands.index("make test")


def test_makefile_never_downloads_playwright_browsers():
    text = (ROOT / "Makefile").read_text()
    assert not re.search(r"^\t.*playwright\s+install", text, flags=re.M)
    for target in ("setup", "test", "demo", "bench", "clean"):
        assert re.search(rf"^{target}:", text, flags=re.M), f"Makefile lacks target {target}"
