"""The lab is test tooling: no production module or command may import it.

Production code is what `make install` ships: lib/ocf_ravada, placement/ravada_placement, the
agents and the commands in tools/.  Imports are read from the source (every `import` statement,
wherever it sits) and, as a second witness, from a real interpreter that imports every
production module.
"""

from __future__ import annotations

import ast
import subprocess
from pathlib import Path

TOP = Path(__file__).resolve().parents[2]
PRODUCTION_PACKAGES = (TOP / "lib" / "ocf_ravada", TOP / "placement" / "ravada_placement")
PRODUCTION_SCRIPT_DIRS = (TOP / "agents", TOP / "tools")
LAB_PACKAGES = ("ravada_lab", "ocf_ravada.lab")


def _python_scripts(directory: Path) -> list[Path]:
    return [p for p in sorted(directory.iterdir())
            if p.is_file() and p.read_bytes().startswith(b"#!/usr/bin/python3")]


def production_sources() -> list[Path]:
    modules = [p for package in PRODUCTION_PACKAGES for p in sorted(package.rglob("*.py"))]
    return modules + [p for d in PRODUCTION_SCRIPT_DIRS for p in _python_scripts(d)]


def _module_of(path: Path) -> str | None:
    """Dotted name of a package module (None for a script)."""
    for package in PRODUCTION_PACKAGES:
        if path.is_relative_to(package):
            parts = path.relative_to(package.parent).with_suffix("").parts
            return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
    return None


def imported_names(source: str, module: str | None, is_package: bool = False) -> set[str]:
    """Absolute names of every module an import statement in `source` names."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = (module or "").split(".")
                anchor = anchor if is_package else anchor[:-1]
                anchor = anchor[:len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def lab_imports(names: set[str]) -> set[str]:
    return {n for n in names if any(n == lab or n.startswith(lab + ".") for lab in LAB_PACKAGES)}


def test_the_scanner_sees_every_form_of_lab_import():
    """The guard below is only as good as this reader: each form is caught."""
    assert lab_imports(imported_names("import ravada_lab.cli", None)) == {"ravada_lab.cli"}
    assert lab_imports(imported_names("from ravada_lab import fence", None))
    assert lab_imports(imported_names("def f():\n    from ravada_lab.vms import AGENT\n", None))
    # `from .lab import x` inside ocf_ravada.vdomain.agent resolves to ocf_ravada.vdomain.lab:
    # not the lab; `from ..lab import x` does resolve to it.
    assert not lab_imports(imported_names("from .lab import x", "ocf_ravada.vdomain.agent"))
    assert lab_imports(imported_names("from ..lab import x", "ocf_ravada.vdomain.agent"))
    assert lab_imports(imported_names("from . import lab", "ocf_ravada", is_package=True))
    assert not lab_imports(imported_names("import ocf_ravada.labels", None))


def test_no_production_source_imports_the_lab():
    sources = production_sources()
    assert len(sources) > 30, "the production sources were not found"
    offenders = {}
    for path in sources:
        found = lab_imports(imported_names(path.read_text(), _module_of(path),
                                           path.name == "__init__.py"))
        if found:
            offenders[str(path.relative_to(TOP))] = sorted(found)
    assert not offenders, f"production code imports the test lab: {offenders}"


def test_the_lab_is_not_inside_the_production_library():
    assert not (TOP / "lib" / "ocf_ravada" / "lab").exists()
    assert (TOP / "lab" / "ravada_lab" / "__init__.py").exists()


def test_importing_every_production_module_loads_no_lab_module():
    program = (
        "import importlib, pkgutil, sys\n"
        "import ocf_ravada, ravada_placement\n"
        "for package in (ocf_ravada, ravada_placement):\n"
        "    for info in pkgutil.walk_packages(package.__path__, package.__name__ + '.'):\n"
        "        importlib.import_module(info.name)\n"
        "print(len(sys.modules))\n"
        "lab = ('ravada_lab', 'ocf_ravada.lab')\n"
        "print(' '.join(m for m in sys.modules if m.startswith(lab)))\n"
    )
    # The lab's directory is on the path, so an import of it would succeed and show up.
    path = ":".join(str(TOP / d) for d in ("lib", "placement", "lab"))
    done = subprocess.run(["/usr/bin/python3", "-c", program], capture_output=True, text=True,
                          env={"PYTHONPATH": path, "PATH": "/usr/bin:/bin"}, timeout=60)
    assert done.returncode == 0, done.stderr
    count, loaded = done.stdout.split("\n")[:2]
    assert int(count) > 100
    assert loaded == "", f"importing production modules loaded the lab: {loaded}"
