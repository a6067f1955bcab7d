"""The layers point down (docs/architecture.md): checked on the code's own imports.

Every ``import`` of every module of ``appliance`` (and of ``hw_mocks``, which ships as
``appliance.hw_mocks``) is read with :mod:`ast`, function-level imports included, and
held against :data:`MAY_IMPORT`: a module may import its own package and the layers
named for it, nothing above. The graph must have no import circle anywhere, and the
hardware stand-ins are imported by the one entry point that builds them.
"""

from __future__ import annotations

import ast
import tomllib
from collections.abc import Iterable, Mapping
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

PROTOCOL = "appliance.protocol"
AUDIO = "appliance.audio"
SETTINGS = "appliance.settings"
SERVICE = "appliance.service"
MQTT = "appliance.mqtt"
PAHO_INTERNALS = "appliance.paho_internals"
DEPLOY = "appliance.deploy"
HW_MOCKS = "appliance.hw_mocks"
DEVICE_CORE = (
    "appliance.device.machine",
    "appliance.device.state",
    "appliance.device.events",
    "appliance.device.effects",
    "appliance.device.view",
    "appliance.device.gestures",
)
"""The device's pure core: no MQTT, GPIO, CoAP, clock or thread (the functional core)."""
DEVICE_PKI = (f"{DEPLOY}.pki", f"{DEPLOY}.files")
"""What the daemon uses of the deployment tools: keys, requests, certificates."""

MAY_IMPORT: dict[str, tuple[str, ...]] = {
    "appliance": (),  # the package's own __init__: a docstring and the version
    # bottom: the wire contract, the config base, systemd glue
    PROTOCOL: (),
    SETTINGS: (),
    SERVICE: (),
    # the audio engine is a leaf under the daemon: it knows the wire, nothing else
    AUDIO: (PROTOCOL,),
    HW_MOCKS: (),
    MQTT: (SETTINGS,),
    PAHO_INTERNALS: (),
    "appliance.pageserver": (),
    "appliance.client": (PROTOCOL, MQTT),
    # the deployment tools (gochat-admin): accounts, the CA, the broker's config; the
    # revocation cut speaks MQTT as the device
    DEPLOY: (PROTOCOL, SETTINGS, MQTT),
    **{core: (PROTOCOL, f"{AUDIO}.port", *DEVICE_CORE) for core in DEVICE_CORE},
    # tools on the daemon's CoAP API: they share its vocabulary, not its code
    "appliance.tools": (PROTOCOL, "appliance.device.effects", "appliance.device.events"),
    # the daemon makes its own key and certificate request with the deployment's PKI
    "appliance.device": (PROTOCOL, AUDIO, SETTINGS, SERVICE, MQTT, PAHO_INTERNALS, *DEVICE_PKI),
    "appliance.server": (PROTOCOL, SETTINGS, SERVICE, MQTT, PAHO_INTERNALS),
    # entry points: the edge, where everything is put together
    "appliance.device.main": ("appliance",),
    "appliance.cli": ("appliance",),
    "appliance.__main__": ("appliance",),
    "appliance.server.main": ("appliance",),
    "appliance.server.__main__": ("appliance",),
}
"""Module (or package) prefix -> the prefixes it may import besides its own package.
The longest matching prefix rules a module."""

STAND_IN_BUILDERS = ("appliance.device.main",)
"""The only product modules that may import the hardware stand-ins."""


def module_files() -> dict[str, Path]:
    """Every module's dotted name and file, ``hw_mocks`` under ``appliance.hw_mocks``."""
    found: dict[str, Path] = {}
    for root, prefix in ((REPO / "appliance", "appliance"), (REPO / "hw_mocks", HW_MOCKS)):
        for path in root.rglob("*.py"):
            parts = path.relative_to(root).with_suffix("").parts
            name = ".".join((prefix, *parts)).removesuffix(".__init__")
            found[name] = path
    return found


def imports_of(name: str, path: Path) -> set[str]:
    """The ``appliance`` modules ``name`` imports (relative imports resolved)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return {target for target in found if target.startswith("appliance")}


def import_graph(files: Mapping[str, Path]) -> dict[str, set[str]]:
    """Module -> the modules (of ``files``) it imports."""
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        graph[name] = {t for t in imports_of(name, path) if t in files and t != name}
    return graph


def _rule(module: str) -> tuple[str, tuple[str, ...]]:
    matches = [p for p in MAY_IMPORT if module == p or module.startswith(p + ".")]
    if not matches:
        raise LookupError(f"{module}: no layer rule; add it to MAY_IMPORT")
    prefix = max(matches, key=len)
    return prefix, MAY_IMPORT[prefix]


def _own_package(module: str, prefix: str) -> str:
    # A rule for one module (e.g. appliance.device.main) still lets it use its package;
    # the root package's own rule covers only itself.
    if prefix == "appliance" or prefix.count(".") <= 1:
        return prefix if prefix != "appliance" else module
    return prefix.rpartition(".")[0]


def upward_edges(graph: Mapping[str, Iterable[str]]) -> list[str]:
    """Every import that its module's layer rule does not allow."""
    bad = []
    for module, targets in sorted(graph.items()):
        prefix, allowed = _rule(module)
        own = _own_package(module, prefix)
        for target in sorted(targets):
            if any(t.startswith(target + ".") for t in targets):
                continue  # ``from package import x``: x is what counts, and is listed too
            # Stand-ins may share code among themselves (hw_mocks.audio builds its room
            # from hw_mocks.room); outside hw_mocks only the entry point may use them.
            stand_in = (
                target.startswith(HW_MOCKS)
                and not module.startswith(HW_MOCKS + ".")
                and module not in STAND_IN_BUILDERS
            )
            if (target == own or target.startswith(own + ".")) and not stand_in:
                continue
            if stand_in and module not in STAND_IN_BUILDERS:
                bad.append(f"{module} -> {target} (only the entry point builds stand-ins)")
            elif not any(target == a or target.startswith(a + ".") for a in allowed):
                bad.append(f"{module} -> {target}")
    return bad


def circles(graph: Mapping[str, Iterable[str]]) -> list[list[str]]:
    """The import circles (strongly connected components of two or more modules)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in graph.get(node, ()):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


# ---------------------------------------------------------------- the checks


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    return import_graph(module_files())


def test_no_module_imports_a_layer_above_it(graph: dict[str, set[str]]) -> None:
    assert upward_edges(graph) == []


def test_there_is_no_import_circle(graph: dict[str, set[str]]) -> None:
    assert circles(graph) == []


def test_the_audio_engine_is_a_leaf_under_the_daemon(graph: dict[str, set[str]]) -> None:
    audio = {t for m, ts in graph.items() if m.startswith(AUDIO) for t in ts}
    assert {t for t in audio if not t.startswith((AUDIO, PROTOCOL))} == set()


def test_the_stand_ins_know_nothing_of_the_appliance(graph: dict[str, set[str]]) -> None:
    mocks = {t for m, ts in graph.items() if m.startswith(HW_MOCKS) for t in ts}
    assert {t for t in mocks if not t.startswith(HW_MOCKS)} == set()
    users = {m for m, ts in graph.items() if any(t.startswith(HW_MOCKS) for t in ts)}
    assert {m for m in users if not m.startswith(HW_MOCKS)} <= set(STAND_IN_BUILDERS)


def test_every_package_is_shipped() -> None:
    config = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    shipped = set(config["tool"]["setuptools"]["packages"])
    packages = {name for name, path in module_files().items() if path.name == "__init__.py"}
    assert shipped == packages


# ---------------------------------------------------------------- the checker itself


def test_the_checker_sees_an_upward_import_and_a_circle() -> None:
    graph = {
        f"{AUDIO}.engine": {"appliance.device.settings"},
        "appliance.device.settings": {f"{AUDIO}.engine"},
        f"{PROTOCOL}.frames": set(),
    }
    assert upward_edges(graph) == [f"{AUDIO}.engine -> appliance.device.settings"]
    assert circles(graph) == [[f"{AUDIO}.engine", "appliance.device.settings"]]


def test_the_checker_sees_a_product_module_reaching_for_a_stand_in() -> None:
    graph = {"appliance.device.daemon": {f"{HW_MOCKS}.gpio"}, f"{HW_MOCKS}.gpio": set()}
    assert upward_edges(graph) == [
        f"appliance.device.daemon -> {HW_MOCKS}.gpio (only the entry point builds stand-ins)"
    ]


def test_relative_imports_are_resolved(tmp_path: Path) -> None:
    module = tmp_path / "session.py"
    module.write_text("from .machine import step\nfrom ..audio import port\n")
    assert imports_of("appliance.device.session", module) == {
        "appliance.device.machine",
        "appliance.device.machine.step",
        "appliance.audio",
        "appliance.audio.port",
    }
