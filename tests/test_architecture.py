"""The architecture's rules, checked on the source (issues 14, 27): layers import only
downwards (the packages, and the layers of ``backends/``), the mount imports no zarr (a store
is read in ``backends/ngff/``), modules import each other in no circle (nor do the
sub-packages of ``backends/``), the FUSE layer and the views dispatch on capabilities (no
``hasattr`` probes, no ``isinstance``/``type() is`` on the mount's own classes), "is it a URL"
is asked where a location is made, no class mixes in a class that uses attributes it does not
define, and no function grows past one screen."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("vfsmount", "backends", "compute")
# The layers of backends/, lowest first: each imports only its own layer and lower ones.
# The vocabulary is the modules at backends/ itself (the package's __init__ only hands
# storage names on, as the reference design's ``from backends import FileManager``).
BACKENDS_LAYERS = ("backends", "backends.guards", "backends.storage", "backends.ngff",
                   "backends.plates")
VOCABULARY = {"backends.errors", "backends.layout", "backends.naming", "backends.physics"}
MAX_FUNCTION_LINES = 60
# Functions that read as tables (argparse builders, the TIFF tag layout) may be longer.
TABLE_LIKE = {"build_parser"}
def _modules(package: str):
    return sorted((REPO / package).rglob("*.py"))


def _all_modules():
    return [p for package in PACKAGES for p in _modules(package)]


def _rel(path: Path) -> str:
    return str(path.relative_to(REPO))


def _tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text())


def _imports(path: Path) -> set[str]:
    out = set()
    for node in ast.walk(_tree(path)):
        if isinstance(node, ast.Import):
            out |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.add(node.module.split(".")[0])
    return out


@pytest.mark.parametrize("package,forbidden", [("backends", {"vfsmount", "compute"}),
                                               ("compute", {"vfsmount"})])
def test_layers_import_only_downwards(package, forbidden):
    offenders = {_rel(p): sorted(_imports(p) & forbidden)
                 for p in _modules(package) if _imports(p) & forbidden}
    assert not offenders, f"{package}/ must not import {sorted(forbidden)}: {offenders}"



# -- zarr stays behind backends/ngff ------------------------------------------------------------

ZARR_MODULES = ("zarr", "numcodecs")


def _zarr_imports(tree: ast.Module) -> list[str]:
    """Imports of zarr or numcodecs (any submodule: ``zarr.core.sync`` included), anywhere in
    the module (functions too), as ``line: module``."""
    out = []
    for n in ast.walk(tree):
        names = [a.name for a in n.names] if isinstance(n, ast.Import) else \
            [n.module] if isinstance(n, ast.ImportFrom) and n.level == 0 and n.module else []
        out += [f"{n.lineno}: {m}" for m in names if m.split(".")[0] in ZARR_MODULES]
    return out


def test_the_mount_reads_stores_only_through_backends():
    """vfsmount/ (the FUSE layer, the views, the CLI, napari) never imports zarr or numcodecs,
    let alone zarr's internals (``zarr.core``, its event loop): opening and reading a store
    belongs in ``backends/ngff/`` (for napari's small levels: ``backends/ngff/levels.py``)."""
    offenders = [f"{_rel(p)}:{line}" for p in _modules("vfsmount")
                 for line in _zarr_imports(_tree(p))]
    assert not offenders, f"zarr imported by the mount (read it in backends/ngff/): {offenders}"


def test_the_zarr_check_finds_an_import():
    code = ("import numpy\nimport zarr\ndef f():\n    from zarr.core.sync import sync\n"
            "    import numcodecs.blosc as b\n    from . import zarr_names\n")
    assert _zarr_imports(ast.parse(code)) == ["2: zarr", "4: zarr.core.sync",
                                             "5: numcodecs.blosc"]


# -- import circles -------------------------------------------------------------------------

def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _import_graph() -> dict[str, set[str]]:
    """module -> the project modules it imports (at the top, in functions, or for type
    checking: every import is an edge a reader follows)."""
    paths = {_module_name(p): p for p in _all_modules()}
    graph: dict[str, set[str]] = {}
    for name, path in paths.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        targets = set()
        for node in ast.walk(_tree(path)):
            if isinstance(node, ast.Import):
                targets |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom):
                base = package.split(".")
                base = base[:len(base) - node.level + 1] if node.level else []
                module = ".".join(base + ([node.module] if node.module else []))
                targets.add(module)
                targets |= {f"{module}.{a.name}" for a in node.names}   # a submodule
        graph[name] = {t for t in targets if t in paths and t != name}
    return graph


def _circles(graph: dict[str, set[str]]) -> list[set[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[set[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.add(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(component)

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_no_import_circles():
    circles = [sorted(c) for c in _circles(_import_graph())]
    assert not circles, f"modules that import each other in a circle: {circles}"


def test_the_circle_check_finds_a_circle():
    assert _circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [{"a", "b", "c"}]


# -- the layers of backends/ -------------------------------------------------------------------

def _backends_layer(module: str) -> str | None:
    """The layer a backends module stands in (None: at backends/ but not vocabulary)."""
    if module in VOCABULARY:
        return "backends"
    return next((layer for layer in reversed(BACKENDS_LAYERS[1:])
                 if module == layer or module.startswith(layer + ".")), None)


def _layer_violations(graph: dict[str, set[str]], layer_of, order) -> list[str]:
    rank = {layer: i for i, layer in enumerate(order)}
    return sorted(f"{a} ({layer_of(a)}) imports {b} ({layer_of(b)})"
                  for a, targets in graph.items() if layer_of(a) is not None
                  for b in targets if layer_of(b) is not None
                  and rank[layer_of(b)] > rank[layer_of(a)])


def _backends_graph() -> dict[str, set[str]]:
    return {m: {t for t in ts if t.startswith("backends.")}
            for m, ts in _import_graph().items() if m.startswith("backends.")}


def test_every_backends_module_stands_in_a_layer():
    homeless = sorted(m for m in _backends_graph() if _backends_layer(m) is None)
    assert not homeless, (f"modules at backends/ outside its vocabulary {sorted(VOCABULARY)}: "
                          f"{homeless}; put each in the sub-package its imports say it belongs to")


def test_backends_layers_import_only_downwards():
    """backends/{errors,layout,naming,physics}.py < guards < storage < ngff < plates."""
    wrong = _layer_violations(_backends_graph(), _backends_layer, BACKENDS_LAYERS)
    assert not wrong, "backends/ layers importing upwards:\n" + "\n".join(wrong)


def test_no_circles_between_backends_subpackages():
    packages: dict[str, set[str]] = {}
    for module, targets in _backends_graph().items():
        layer = _backends_layer(module)
        if layer is not None:
            packages.setdefault(layer, set()).update(
                t for t in map(_backends_layer, targets) if t not in (None, layer))
    circles = [sorted(c) for c in _circles(packages)]
    assert not circles, f"backends/ sub-packages that import each other in a circle: {circles}"


def test_the_layer_check_finds_an_upward_import():
    layer = {"v": "low", "s": "mid", "p": "high"}.get
    graph = {"v": set(), "s": {"v"}, "p": {"s", "v"}}
    assert _layer_violations(graph, layer, ("low", "mid", "high")) == []
    graph["s"].add("p")
    assert _layer_violations(graph, layer, ("low", "mid", "high")) == ["s (mid) imports p (high)"]


# -- capabilities, not probes -----------------------------------------------------------------

def _own_classes(package: str) -> set[str]:
    return {n.name for p in _modules(package) for n in ast.walk(_tree(p))
            if isinstance(n, ast.ClassDef)}


def test_the_mount_asks_capabilities_not_hasattr():
    """vfsmount/ asks image sets and nodes what they can do (their properties and the node
    protocol's defaults); it never probes a backend or an image set with ``hasattr``."""
    probes = [f"{_rel(p)}:{n.lineno}" for p in _modules("vfsmount") for n in ast.walk(_tree(p))
              if isinstance(n, ast.Call) and getattr(n.func, "id", None) == "hasattr"
              # a feature of the compiled pyfuse3 (built with or without the passthrough
              # patch) is the library's, not a backend's: that probe is allowed
              and getattr(n.args[0], "id", None) != "pyfuse3"]
    assert not probes, f"hasattr probes in vfsmount/: {probes}"


def test_is_it_a_url_is_asked_where_a_location_is_made():
    """``is_url`` is called by ``Location.of`` (a plate opened, a store's root, an output) and
    by the command line's one check of its arguments; everything else asks a Location or the
    plate (``Plate.remote``)."""
    allowed = {"backends/storage/remote.py", "vfsmount/cli.py"}
    callers = []
    for path in _all_modules():
        tree = _tree(path)
        names = {"is_url"} | {a.asname for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)
                              for a in n.names if a.name == "is_url" and a.asname}
        callers += [f"{_rel(path)}:{n.lineno}" for n in ast.walk(tree) if isinstance(n, ast.Call)
                    and {getattr(n.func, "id", None), getattr(n.func, "attr", None)} & names
                    and _rel(path) not in allowed]
    assert not callers, f"is_url asked again (ask the Location or Plate.remote): {callers}"


def _tiff_rule_copies(tree: ast.Module) -> list[int]:
    """Lines that spell the TIFF-extension rule out: a tuple or set holding ".tif"."""
    return [n.lineno for n in ast.walk(tree) if isinstance(n, (ast.Tuple, ast.Set))
            and any(isinstance(e, ast.Constant) and e.value == ".tif" for e in n.elts)]


def test_the_tiff_extension_rule_is_defined_once():
    """``backends/layout.py`` (``TIFF_EXTENSIONS``, ``is_tiff_name``) is the one place."""
    copies = [f"{_rel(path)}:{line}" for path in _all_modules()
              if _rel(path) != "backends/layout.py" for line in _tiff_rule_copies(_tree(path))]
    assert not copies, f"the TIFF rule again (use backends.layout.is_tiff_name): {copies}"
    assert _tiff_rule_copies(ast.parse('ok = name.endswith((".tif", ".tiff"))')) == [1]


def _class_checks(path: Path, classes: set[str]) -> list[str]:
    """``isinstance(x, C)`` and ``type(x) is C`` with C one of ``classes``."""
    out = []
    for n in ast.walk(_tree(path)):
        named = []
        if isinstance(n, ast.Call) and getattr(n.func, "id", None) == "isinstance":
            second = n.args[1] if len(n.args) > 1 else None
            named = [e for e in (second.elts if isinstance(second, ast.Tuple) else [second])
                     if e is not None]
        elif isinstance(n, ast.Compare) and isinstance(n.left, ast.Call) \
                and getattr(n.left.func, "id", None) == "type":
            named = n.comparators
        out += [f"{_rel(path)}:{n.lineno}" for e in named if getattr(e, "id", None) in classes]
    return out


def test_the_fuse_layer_and_the_views_dispatch_on_capabilities():
    classes = _own_classes("vfsmount") | _own_classes("backends")
    files = [REPO / "vfsmount" / "fs.py", REPO / "vfsmount" / "tree.py",
             *_modules("vfsmount/views")]
    checks = [c for f in files for c in _class_checks(f, classes)]
    assert not checks, f"class checks where a capability should be asked: {checks}"


# -- mixins that own their state ----------------------------------------------------------------

def _classes() -> dict[str, tuple[str, ast.ClassDef]]:
    return {n.name: (_rel(p), n) for p in _all_modules() for n in ast.walk(_tree(p))
            if isinstance(n, ast.ClassDef)}


def _defined(cls: ast.ClassDef, classes) -> set[str]:
    """Names a class (and its own project bases) defines: methods, class attributes,
    annotations, slots, and attributes its methods assign to ``self``."""
    names: set[str] = set()
    for node in cls.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names |= {t.id for t in node.targets if isinstance(t, ast.Name)}
            if any(getattr(t, "id", None) == "__slots__" for t in node.targets):
                names |= {e.value for e in ast.walk(node.value) if isinstance(e, ast.Constant)}
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
    for node in ast.walk(cls):
        if isinstance(node, (ast.Attribute,)) and isinstance(node.ctx, ast.Store) \
                and getattr(node.value, "id", None) == "self":
            names.add(node.attr)
    for base in cls.bases:
        if getattr(base, "id", None) in classes:
            names |= _defined(classes[base.id][1], classes)
    return names


def _used(cls: ast.ClassDef) -> set[str]:
    return {n.attr for n in ast.walk(cls) if isinstance(n, ast.Attribute)
            and isinstance(n.ctx, ast.Load) and getattr(n.value, "id", None) == "self"}


def mixins_using_what_they_do_not_define() -> dict[str, list[str]]:
    """Every project class that another class inherits from beside its main base (a mixin),
    with the attributes of ``self`` it uses but does not define itself."""
    classes = _classes()
    out: dict[str, list[str]] = {}
    for _where, cls in classes.values():
        bases = [b.id for b in cls.bases if getattr(b, "id", None) in classes]
        for mixin in bases[:-1] if len(cls.bases) > 1 else []:
            where, node = classes[mixin]
            missing = sorted(_used(node) - _defined(node, classes) - {"__class__", "__dict__"})
            if missing:
                out[f"{where}:{mixin} (mixed into {cls.name})"] = missing
    return out


def test_no_mixin_uses_attributes_it_does_not_define():
    offenders = mixins_using_what_they_do_not_define()
    assert not offenders, f"mixins sharing state they do not own: {offenders}"


def test_the_mixin_check_finds_shared_state():
    code = ("class Reader:\n    def read(self):\n        return self._store\n"
            "class Store:\n    def __init__(self):\n        self._store = 1\n"
            "class Backend(Reader, Store):\n    pass\n")
    tree = ast.parse(code)
    classes = {n.name: ("x.py", n) for n in tree.body}
    reader = classes["Reader"][1]
    assert _used(reader) - _defined(reader, classes) == {"_store"}


# -- size -----------------------------------------------------------------------------------------

def test_no_function_longer_than_one_screen():
    long = []
    for path in _all_modules():
        for node in ast.walk(_tree(path)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > MAX_FUNCTION_LINES and node.name not in TABLE_LIKE:
                    long.append(f"{_rel(path)}:{node.lineno} {node.name} ({n} lines)")
    assert not long, "functions over 60 lines:\n" + "\n".join(long)
