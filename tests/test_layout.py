"""The shape of the project a newcomer relies on: a short model file, no import cycles, the
shipped yaml files, and a tree that speaks of itself in the present."""

import ast
import re
import subprocess
from pathlib import Path

import yaml

from recbole_mind import properties

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "recbole_mind"
DELETED_KEYS = {"recency_maps", "interest_recency", "interest_recency_gain", "interest_projection",
                "history_negatives", "dropout_prob"}


def module_name(path):
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path):
    """The recbole_mind modules a file imports, at the top or inside functions."""
    found = set()
    modules = {module_name(p) for p in PACKAGE.rglob("*.py")}
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
    return {name for name in found if name in modules and name != "recbole_mind"}


def test_no_two_modules_import_each_other():
    graph = {module_name(p): imports_of(p) for p in PACKAGE.rglob("*.py")}
    # a package's own __init__ re-exports its children; a child importing its package is a cycle
    done, path = set(), []

    def visit(node):
        if node in path:
            cycle = path[path.index(node):] + [node]
            raise AssertionError("import cycle: " + " -> ".join(cycle))
        if node in done:
            return
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            visit(nxt)
        path.pop()
        done.add(node)

    for node in sorted(graph):
        visit(node)


def test_import_cycle_detection_finds_one(tmp_path):
    """The check above is not vacuous: it sees function-level imports."""
    source = "def f():\n    from recbole_mind import cli\n"
    probe = PACKAGE / "model" / "_probe_for_test.py"
    probe.write_text(source)
    try:
        assert "recbole_mind.cli" in imports_of(probe)
    finally:
        probe.unlink()


def test_model_file_is_short_and_the_shipped_yaml_files_are_clean():
    assert len((PACKAGE / "model" / "mind.py").read_text().splitlines()) <= 300
    defaults = yaml.safe_load(properties.MIND.read_text())
    assert not DELETED_KEYS & set(defaults)
    lines = [line for line in properties.MIND.read_text().splitlines() if line and not line.startswith("#")]
    assert len(lines) == len(defaults) and all("# " in line for line in lines), "one commented line a key"
    paper = yaml.safe_load(properties.MIND_PAPER.read_text())
    preset = yaml.safe_load(properties.MIND_MULTI_TARGET.read_text())
    assert set(paper) <= set(defaults) and set(preset) <= set(defaults)
    # every key of the paper's file undoes a default or a protocol preset
    assert all(paper[k] != defaults[k] or (k in preset and paper[k] != preset[k]) for k in paper)
    assert all(k in paper for k in preset if preset[k] != defaults[k])  # the paper's model under any protocol


def test_readme_is_a_manual_and_dataset_folder_exists():
    assert len((ROOT / "README.md").read_text().splitlines()) <= 300
    assert (ROOT / "dataset" / "README.md").is_file()


# Work-period labels: a numbered work period, a name ending in its number, the day as "now"
# (pytest's fixture scope is no label). Written in pieces so this file does not match itself.
LABEL = re.compile("|".join([r"\b[Ss]ession" + r"s? \d", r"[-_/]s\d+(?=[-_./]|$)", r"\btoday" + "'s"]))


def test_no_work_period_labels_in_the_tree():
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True,
                           text=True, check=True).stdout.split()
    found = []
    for name in files:
        if LABEL.search(name):
            found.append(f"{name}: its name")
        path = ROOT / name
        if not path.is_file() or path.suffix in (".png", ".pth", ".pt2"):
            continue
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            if LABEL.search(line):
                found.append(f"{name}:{number}: {line.strip()[:100]}")
    assert not found, "\n".join(found[:30])
