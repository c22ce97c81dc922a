"""The layout the design card fixes: what the bundle runs apart from how it is measured, no import cycles, thin scripts."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {"bundle", "bundle.networks", "bundle.benchmarks", "bundle.benchmarks.baselines"}


def module_imports() -> dict[str, set[str]]:
    """Every module of ``bundle`` and the modules of ``bundle`` it imports (packages resolved to their modules)."""
    graph = {}
    for path in (ROOT / "bundle").rglob("*.py"):
        parts = path.relative_to(ROOT).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        imported = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
                imported |= {f"{target}.{a.name}" for a in node.names} if node.module is None else {target}
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("bundle"):
                imported.add(node.module)
            elif isinstance(node, ast.Import):
                imported |= {a.name for a in node.names if a.name.startswith("bundle")}
        graph[name] = imported
    known = set(graph)

    def module_of(name):
        while name not in known and "." in name:
            name = name.rsplit(".", 1)[0]
        return name

    return {m: {module_of(d) for d in deps} - {m} for m, deps in graph.items()}


def test_the_top_level_is_the_design_cards():
    tracked = {p.name for p in ROOT.iterdir() if not p.name.startswith(".")} - {"eval", "runs", "outputs"}
    assert {"bundle", "configs", "scripts", "tests", "models", "docs", "LICENSE", "README.md"} <= tracked
    assert tracked <= {"bundle", "configs", "scripts", "tests", "models", "docs", "LICENSE", "README.md",
                       "pyproject.toml", "large_files.yml", "diffkillr_bundle.egg-info"}


def test_the_bundle_has_no_import_cycle():
    graph = module_imports()
    state = {}

    def visit(module, path):
        state[module] = "open"
        for dep in graph.get(module, ()):
            if dep in PACKAGES:  # a package's __init__ only names its modules
                continue
            assert state.get(dep) != "open", " -> ".join(path + [module, dep])
            if dep not in state:
                visit(dep, path + [module])
        state[module] = "done"

    for module in graph:
        if module not in state:
            visit(module, [])


def test_what_the_bundle_runs_never_imports_its_benchmarks():
    for module, deps in module_imports().items():
        if not module.startswith("bundle.benchmarks"):
            assert not any(d.startswith("bundle.benchmarks") for d in deps), module


def test_scripts_are_thin_entry_points_that_import_the_installed_package():
    for script in (ROOT / "scripts").glob("*.py"):
        text = script.read_text()
        assert "sys.path" not in text, script.name
        assert len(text.splitlines()) < 150, script.name
