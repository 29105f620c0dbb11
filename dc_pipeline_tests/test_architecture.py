"""The layering stays as designed: no import cycles, group folders apart, a core without Dagster."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "dc_pipeline"
GROUPS = sorted(p.name for p in (PACKAGE / "defs").iterdir() if p.is_dir() and not p.name.startswith("_"))


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in PACKAGE.rglob("*.py")}


def imports_of(path: Path) -> set[str]:
    """Every module imported anywhere in the file (top level and inside functions), resolved to a module
    of the package where it is one."""
    tree = ast.parse(path.read_text())
    base = module_name(path) if path.name == "__init__.py" else module_name(path).rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            mod = node.module or ""
            if node.level:
                up = base.split(".")[: len(base.split(".")) - (node.level - 1)]
                mod = ".".join(up + ([mod] if mod else []))
            names = [mod] + [f"{mod}.{a.name}" for a in node.names]
        for name in names:
            while name and name not in MODULES and "." in name:
                name = name.rsplit(".", 1)[0]
            found.add(name)
    return found


GRAPH = {
    m: {t for t in imports_of(p) if t in MODULES and t != m and not m.startswith(t + ".")} for m, p in MODULES.items()
}


def test_no_import_cycles_function_local_imports_included():
    index, low, stack, on, cycles = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in GRAPH[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in GRAPH:
        if v not in index:
            visit(v)
    assert cycles == []


@pytest.mark.parametrize("group", GROUPS)
def test_a_group_folder_never_imports_another(group):
    ours = f"dc_pipeline.defs.{group}"
    for module, targets in GRAPH.items():
        if module == ours or module.startswith(ours + "."):
            others = [
                t
                for t in targets
                if t.startswith("dc_pipeline.defs.") and t.split(".")[2] in GROUPS and t.split(".")[2] != group
            ]
            assert others == [], f"{module} imports {others}"


def test_core_warehouse_and_catalog_never_import_the_shell():
    for module, path in MODULES.items():
        if module.startswith(("dc_pipeline.core", "dc_pipeline.warehouse", "dc_pipeline.demo")) or module in (
            "dc_pipeline.catalog",
            "dc_pipeline.settings",
        ):
            shell = [t for t in imports_of(path) if t.startswith("dc_pipeline.defs") or t == "dc_pipeline.definitions"]
            assert shell == [], f"{module} imports the Dagster shell: {shell}"
        if module.startswith(("dc_pipeline.core", "dc_pipeline.warehouse", "dc_pipeline.demo")):
            assert not any(t == "dagster" or t.startswith("dagster") for t in imports_of(path)), (
                f"{module} imports dagster: the core stays Dagster-free"
            )


def test_the_pipeline_never_imports_the_demo_generators():
    for module, path in MODULES.items():
        if module.startswith(("dc_pipeline.core", "dc_pipeline.warehouse", "dc_pipeline.defs")):
            demo = [t for t in imports_of(path) if t.startswith("dc_pipeline.demo")]
            assert demo == [], f"{module} imports the demo package: {demo}"


def test_every_resource_lives_in_the_resources_module():
    for module, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef) and any(
                getattr(b, "id", getattr(b, "attr", "")) in ("ConfigurableResource", "DuckDBResource")
                for b in node.bases
            ):
                assert module == "dc_pipeline.defs.resources", f"resource {node.name} is defined in {module}"


def test_only_the_settings_module_reads_dc_variables():
    for module, path in MODULES.items():
        if module in ("dc_pipeline.settings",):
            continue
        text = path.read_text()
        for needle in ('getenv("DC_', 'environ.get("DC_', 'environ["DC_'):
            assert needle not in text, f"{module} reads a DC_ variable itself ({needle}); use get_settings()"


def test_groups_folders_and_key_prefixes_agree():
    from dc_pipeline.catalog import GROUPS as CATALOG_GROUPS
    from dc_pipeline.defs import build_definitions
    from dc_pipeline.defs.resources import resources_for

    defs = build_definitions(resources_for(Path("/tmp/dc-pipeline-architecture-test")))
    graph = defs.resolve_asset_graph()
    for key in graph.get_all_asset_keys():
        group = graph.get(key).group_name
        assert key.path[0] == group, f"{key.to_user_string()} is in group {group}"
        assert group in CATALOG_GROUPS and (group in GROUPS or group in ("raw",)), group
    assert set(GROUPS) - {"automation"} == set(CATALOG_GROUPS)


def test_the_readme_documents_every_reason_code():
    from dc_pipeline.core.data.cleaning import BATCH_REFUSALS, REASONS

    readme = (PACKAGE.parent / "README.md").read_text()
    missing = [code for code in [*REASONS, *BATCH_REFUSALS] if f"| `{code}` |" not in readme]
    assert missing == [], f"reason codes missing from the README tables: {missing}"
