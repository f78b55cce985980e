"""Layering (issue 14): every import of ``src/pretrained`` points down the layer list.

The layer order is parsed from the code block of ``docs/architecture.md`` (its
reading rules are stated below that block), so the document and this test
cannot drift. Every import counts: module level, inside functions, under
``TYPE_CHECKING``, relative (``from . import x``) or absolute, and
``importlib.import_module("pretrained....")`` with a literal name.
"""

from __future__ import annotations

import ast
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Tuple

import pytest

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
DOC = ROOT / "docs" / "architecture.md"

# The only exceptions, as (rule, importer, imported): "upward" (an import from a higher layer) or
# "private" (a ``_name`` taken from a module of another layer). Each one must still happen (an entry
# that no longer does fails the test), so this set only shrinks: empty it as the branches land.
KNOWN_EXCEPTIONS = {
    # _check_inputs, _layout for adapters' in-memory writer: wants a public bytes writer in storage/safetensors.py
    ("private", "pretrained.adapters.files", "pretrained.storage.safetensors"),
}

# The order of the style guide's practice 2 (errors/utils -> storage -> loading -> placement ->
# modeling -> models/<arch> -> auto -> cli): the document may add layers, not reorder these.
STYLE_GUIDE_ORDER = ["pretrained.errors", "pretrained.utils", "pretrained.storage", "pretrained.loading",
                     "pretrained.placement", "pretrained.modeling", "pretrained.models", "pretrained.auto",
                     "pretrained.cli"]
REFERENCE_LIBRARIES = {"transformers", "accelerate", "peft", "bitsandbytes"}
INIT = 10**6  # a package's __init__ ranks after all of its members
ISOLATED = "no imports between siblings"


# ----------------------------------------------------------------------------- the document


@dataclass
class Layer:
    index: int
    title: str  # the names column of its line, e.g. "storage/"
    line: int
    package: Optional[str] = None  # dotted name when the layer is one package
    modules: List[str] = field(default_factory=list)  # top-level names on the line
    members: Dict[str, int] = field(default_factory=dict)  # listed package members -> rank in the package
    description: str = ""

    @property
    def isolated(self) -> bool:
        return ISOLATED in self.description


def _dotted(name: str, package: Optional[str]) -> str:
    name = name.strip().rstrip("/")
    name = name[:-3] if name.endswith(".py") else name
    parts = ([package] if package else ["pretrained"]) + ([] if name == "__init__" else name.split("/"))
    return ".".join(parts)


def parse_layers(text: str) -> List[Layer]:
    """The layers of the first code block after 'built in layers', lowest first."""
    start = text.index("```", text.index("built in layers"))
    block = text[start:].split("\n", 1)[1].split("```", 1)[0]
    offset = text[:start].count("\n") + 2
    layers: List[Layer] = []
    for number, raw in enumerate(block.splitlines(), offset):
        if not raw.strip():
            continue
        indent = len(raw) - len(raw.lstrip(" "))
        names, _, description = raw.strip().partition("  ")
        if indent > 4:
            layers[-1].description += " " + raw.strip()
            continue
        names = [n.strip() for n in names.split(",") if n.strip() and "<" not in n]
        if indent == 0:
            layer = Layer(len(layers), raw.strip().split("  ")[0], number, description=description.strip())
            layer.modules = [_dotted(n, None) for n in names]
            if len(names) == 1 and names[0].endswith("/"):
                layer.package = layer.modules[0]
            layers.append(layer)
        else:
            assert indent == 4 and layers[-1].package, f"{DOC}:{number}: a member line outside a package"
            rank = len(set(layers[-1].members.values()))
            layers[-1].members.update({_dotted(n, layers[-1].package): rank for n in names})
    return layers


@dataclass(frozen=True)
class Place:
    layer: Layer
    rank: Optional[int]  # rank inside the layer's package; None: not listed (free within it)
    listed: str  # the listed name it falls under

    def describe(self) -> str:
        where = f"{self.layer.title} (layer {self.layer.index})"
        if self.layer.package and self.listed != self.layer.package and self.rank is not None:
            return f"{where}, member {self.listed.rsplit('.', 1)[1]} (#{self.rank} of the package)"
        return where


def place_of(module: str, layers: List[Layer]) -> Optional[Place]:
    """Where ``module`` sits: its own entry, else the nearest listed package or module containing it."""
    best: Optional[Tuple[int, Place]] = None
    for layer in layers:
        names = {**{m: None for m in layer.modules}, **layer.members}
        for name, rank in names.items():
            exact = module == name
            if not exact and (name == "pretrained" or not module.startswith(name + ".")):
                continue
            if name == layer.package:
                rank = INIT if exact else None
            if best is None or len(name) > best[0]:
                best = (len(name), Place(layer, rank, name))
    return best[1] if best else None


# ----------------------------------------------------------------------------- the imports


def source_modules(src: Path = SRC) -> Dict[str, Path]:
    """Dotted module name -> file, for every module of the package."""
    modules = {}
    for path in sorted((src / "pretrained").rglob("*.py")):
        parts = path.relative_to(src).with_suffix("").parts
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def imports_in(source: str, module: str, is_package: bool, known: set) -> Iterator[Tuple[int, str, str]]:
    """``(line, imported module, name taken from it or "")`` of every import in ``source``."""
    package = module if is_package else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name, ""
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[:len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for alias in node.names:
                candidate = f"{target}.{alias.name}"
                yield (node.lineno, candidate, "") if candidate in known else (node.lineno, target, alias.name)
        elif (isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", None))
              == "import_module" and node.args and isinstance(node.args[0], ast.Constant)
              and isinstance(node.args[0].value, str)):
            yield node.lineno, node.args[0].value, ""


def import_edges(modules: Dict[str, Path]):
    """``(importer, file, line, imported, name)`` for every import of one of our modules by another."""
    known = set(modules)
    for module, path in modules.items():
        for line, target, name in imports_in(path.read_text(), module, path.name == "__init__.py", known):
            if (target == "pretrained" or target.startswith("pretrained.")) and target != module:
                yield module, path, line, target, name


def _same_architecture(importer: str, target: str) -> bool:
    """``<arch>_<part>`` may import ``<arch>``: both files of one architecture."""
    return importer.rsplit(".", 1)[1].startswith(target.rsplit(".", 1)[1] + "_")


def edge_problem(importer: str, target: str, layers: List[Layer]) -> Optional[str]:
    """Why importing ``target`` from ``importer`` breaks the layering, or ``None``."""
    mine, theirs = place_of(importer, layers), place_of(target, layers)
    if mine is None or theirs is None:
        return None  # reported by test_every_module_has_a_layer
    if mine.layer.index != theirs.layer.index:
        if theirs.layer.index < mine.layer.index:
            return None
        return f"{mine.describe()} imports {theirs.describe()}, a higher layer"
    layer = mine.layer
    if layer.package is None or mine.rank == INIT:
        return None  # one layer of plain modules, or the package's __init__ (after all of its members)
    if theirs.rank == INIT:
        return f"{mine.describe()} imports its own package's __init__, which comes after its members"
    if layer.isolated:
        if _same_architecture(importer, target):
            return None
        return f"{layer.title} says '{ISOLATED}': {importer} imports its sibling {target}"
    if mine.rank is None or theirs.rank is None or theirs.rank <= mine.rank:
        return None
    return f"{mine.describe()} imports {theirs.describe()}, listed after it"


def problems(layers: List[Layer], modules: Dict[str, Path], src: Path = SRC) -> List[Tuple[str, str, str]]:
    """``(importer, imported, 'file:line: why')`` of every edge that breaks the layering."""
    found = {}
    for importer, path, line, target, _ in import_edges(modules):
        why = edge_problem(importer, target, layers)
        if why:
            found[importer, target, f"{path.relative_to(src.parent)}:{line}: {why}"] = None
    return list(found)


# ----------------------------------------------------------------------------- the tests


@pytest.fixture(scope="module")
def layers() -> List[Layer]:
    return parse_layers(DOC.read_text())


def test_the_document_lists_the_style_guides_layers_in_its_order(layers):
    index = {name: place_of(name, layers).layer.index for name in STYLE_GUIDE_ORDER}
    assert [index[n] for n in STYLE_GUIDE_ORDER] == sorted(index[n] for n in STYLE_GUIDE_ORDER), index
    assert place_of("pretrained.models", layers).layer.isolated, f"models/ must say '{ISOLATED}'"


def test_every_module_has_a_layer(layers):
    missing = [str(path) for module, path in source_modules().items() if place_of(module, layers) is None]
    assert not missing, f"{DOC} places no layer (nor a package containing them) for {missing}"


def test_every_listed_module_exists(layers):
    modules = source_modules()
    stale = [f"{DOC.name}:{layer.line}: {name}" for layer in layers
             for name in [*layer.modules, *layer.members] if name not in modules]
    assert not stale, f"listed in the layer list but not in src/pretrained: {stale}"


def test_no_import_goes_up_the_layers(layers):
    found = problems(layers, source_modules())
    known = {(a, b) for rule, a, b in KNOWN_EXCEPTIONS if rule == "upward"}
    unexpected = [why for importer, target, why in found if (importer, target) not in known]
    assert not unexpected, "imports against docs/architecture.md's layer order:\n" + "\n".join(unexpected)
    stale = known - {(importer, target) for importer, target, _ in found}
    assert not stale, f"these upward imports are gone: remove them from KNOWN_EXCEPTIONS: {stale}"


def test_no_private_name_crosses_a_layer(layers):
    found = {}
    for importer, path, line, target, name in import_edges(source_modules()):
        if name.startswith("_") and not name.startswith("__") and \
                place_of(importer, layers).layer is not place_of(target, layers).layer:
            found.setdefault((importer, target), []).append(f"{path.relative_to(ROOT)}:{line}: {name}")
    known = {(a, b) for rule, a, b in KNOWN_EXCEPTIONS if rule == "private"}
    unexpected = [where for edge, wheres in found.items() if edge not in known for where in wheres]
    assert not unexpected, f"private names of another layer (give that module a public name): {unexpected}"
    stale = known - set(found)
    assert not stale, f"these private imports are gone: remove them from KNOWN_EXCEPTIONS: {stale}"


def _fake_tree(tmp_path, files: Dict[str, str]) -> Dict[str, Path]:
    for name, text in files.items():
        path = tmp_path / "src" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return source_modules(tmp_path / "src")


def test_the_checker_finds_upward_sibling_and_out_of_order_imports(layers, tmp_path):
    modules = _fake_tree(tmp_path, {
        "pretrained/__init__.py": "", "pretrained/storage/__init__.py": "", "pretrained/models/__init__.py": "",
        "pretrained/storage/names.py": "def f():\n    from ..modeling import base\n",  # function-local, upward
        "pretrained/storage/folder.py": "from . import writer\n",  # inside storage/, listed after it
        "pretrained/storage/writer.py": "from .names import x\nfrom . import scratch\n",  # both fine
        "pretrained/storage/scratch.py": "from .writer import y\n",  # not listed: free inside storage/
        "pretrained/models/t5_heads.py": "from .t5 import T5\n",  # its own architecture: fine
        "pretrained/models/gpt2.py": "import importlib\nimportlib.import_module('pretrained.models.bert')\n",
        "pretrained/loading.py": "from pretrained.placement.plan import infer_device_map\n",
    })
    found = sorted(why for _, _, why in problems(layers, modules, tmp_path / "src"))
    assert len(found) == 4, found
    assert found[0].startswith("src/pretrained/loading.py:1: loading.py (layer ") and "placement/ (layer" in found[0]
    assert found[1].startswith("src/pretrained/models/gpt2.py:2: models/ says") and "sibling" in found[1]
    assert found[2].startswith("src/pretrained/storage/folder.py:1: storage/") and "member writer" in found[2]
    assert found[3].startswith("src/pretrained/storage/names.py:2: storage/") and "modeling/ (layer" in found[3]


def _top_level_imports(tree: ast.AST) -> Iterator[Tuple[int, str]]:
    """Imports that run when the module is imported: not in a function, not under TYPE_CHECKING."""
    def walk(node):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                continue
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                yield from walk(ast.Module(body=child.orelse, type_ignores=[]))
                continue
            if isinstance(child, ast.Import):
                yield from ((child.lineno, a.name) for a in child.names)
            elif isinstance(child, ast.ImportFrom) and not child.level:
                yield child.lineno, child.module
            yield from walk(child)
    return walk(tree)


def test_import_time_needs_only_the_standard_library_and_torch():
    eager = [f"{path.relative_to(SRC)}:{line}: {name}" for path in source_modules().values()
             for line, name in _top_level_imports(ast.parse(path.read_text()))
             if name.split(".")[0] not in sys.stdlib_module_names | {"torch", "pretrained"}]
    assert not eager, f"import these inside the functions that use them (style practice 9): {eager}"


def test_reference_libraries_are_never_imported():
    found = [f"{path.relative_to(SRC)}:{line}: {target}" for module, path in source_modules().items()
             for line, target, _ in imports_in(path.read_text(), module, path.name == "__init__.py", set())
             if target.split(".")[0] in REFERENCE_LIBRARIES]
    assert not found, f"Transformers, Accelerate, PEFT and bitsandbytes are references only: {found}"


def _nn_uses(tree: ast.AST) -> Iterator[int]:
    """Lines that import ``torch.nn`` or name ``torch.nn`` / ``nn.Module`` (docstrings do not count)."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import) and any(a.name.startswith("torch.nn") for a in node.names):
            yield node.lineno
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("torch") and (
                (node.module or "").startswith("torch.nn") or any(a.name == "nn" for a in node.names)):
            yield node.lineno
        elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and (
                (node.value.id, node.attr) in {("torch", "nn"), ("nn", "Module")}):
            yield node.lineno


def test_storage_knows_no_nn_module():
    uses = [f"{path.relative_to(SRC)}:{line}" for module, path in source_modules().items()
            if module.startswith("pretrained.storage") for line in _nn_uses(ast.parse(path.read_text()))]
    assert not uses, f"storage/ is 'files only, no nn.Module' (docs/architecture.md): {uses}"


def test_the_other_checks_see_what_they_should():
    source = ("import os\nimport numpy\nfrom typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import tqdm\n"
              "def f():\n    import psutil\nclass A:\n    import requests\n")
    assert [name for _, name in _top_level_imports(ast.parse(source))] == ["os", "numpy", "typing", "requests"]
    source = ('"""Nothing here knows ``nn.Module``."""\nimport torch\nfrom torch import nn\n'
              "x = torch.nn.Linear\ny: 'nn.Module'\n")
    assert sorted(set(_nn_uses(ast.parse(source)))) == [3, 4]
