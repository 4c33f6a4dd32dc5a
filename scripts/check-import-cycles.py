#!/usr/bin/env python3
"""Fails when the files of a crate import each other in a loop.

    check-import-cycles.py CRATE_SRC_DIR...

For every `.rs` file under each directory, the script collects the paths it
names through `crate::`, `super::` and `self::` (in `use` trees, including
grouped ones, and inline in code), resolves each to the file of the longest
module prefix that exists, and builds the file graph. A `mod x;` declaration
is not an import. Any strongly connected component of two or more files is
printed and makes the exit status 1.

The parser is deliberately small: comments, string and char literals are
removed first, then inline `mod name { ... }` blocks are tracked by brace
depth so that `super::` inside them resolves from the right module.
`#[path = "..."] mod x;` is honoured. It does not understand macros that
build paths, which this workspace does not use across files.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

COMMENT_LINE = re.compile(r"//[^\n]*")
COMMENT_BLOCK = re.compile(r"/\*.*?\*/", re.S)
RAW_STRING = re.compile(r'\br(#*)"(.*?)"\1', re.S)
STRING = re.compile(r'b?"(?:\\.|[^"\\])*"', re.S)
CHAR = re.compile(r"b?'(?:\\.|[^'\\\n])'")
MOD_DECL = re.compile(
    r'(?:#\[path\s*=\s*"(?P<path>[^"]+)"\]\s*)?(?:#\[[^\]]*\]\s*)*'
    r"(?:pub(?:\([^)]*\))?\s+)?mod\s+(?P<name>\w+)\s*(?P<end>[;{])"
)
USE = re.compile(r"\buse\s+([^;]+);")
INLINE_PATH = re.compile(r"\b(?:crate|super|self)(?:\s*::\s*\w+)+")


def strip(source: str) -> str:
    # Paths inside #[path = "..."] must survive: protect them first.
    protected = {}

    def keep(match: re.Match) -> str:
        key = f"__PATH{len(protected)}__"
        protected[key] = match.group(0)
        return key

    source = re.sub(r'#\[path\s*=\s*"[^"]+"\]', keep, source)
    source = COMMENT_BLOCK.sub(" ", source)
    source = COMMENT_LINE.sub("", source)
    source = RAW_STRING.sub('""', source)
    source = STRING.sub('""', source)
    source = CHAR.sub("' '", source)
    for key, value in protected.items():
        source = source.replace(key, value)
    return source


def expand_use(tree: str) -> list[str]:
    """`a::{b, c::{d, e}}` -> ["a::b", "a::c::d", "a::c::e"]."""
    tree = re.sub(r"\s+as\s+\w+", "", tree)
    tree = re.sub(r"\s+", "", tree)
    out: list[str] = []

    def walk(prefix: str, text: str) -> None:
        brace = text.find("{")
        if brace < 0:
            for item in split_top(text):
                out.append(join(prefix, item))
            return
        head = text[:brace]
        inner = text[brace + 1 : matching(text, brace)]
        base = join(prefix, head.rstrip(":"))
        for item in split_top(inner):
            if "{" in item:
                walk(base, item)
            else:
                out.append(join(base, item))

    walk("", tree)
    return [p for p in out if p]


def matching(text: str, open_at: int) -> int:
    depth = 0
    for index in range(open_at, len(text)):
        if text[index] == "{":
            depth += 1
        elif text[index] == "}":
            depth -= 1
            if depth == 0:
                return index
    return len(text)


def split_top(text: str) -> list[str]:
    items, depth, current = [], 0, ""
    for ch in text:
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
        if ch == "," and depth == 0:
            items.append(current)
            current = ""
        else:
            current += ch
    if current:
        items.append(current)
    return [i for i in items if i]


def join(prefix: str, item: str) -> str:
    if not prefix:
        return item
    if not item or item == "self":
        return prefix
    return f"{prefix}::{item}"


class Crate:
    def __init__(self, src: Path):
        self.src = src
        self.modules: dict[tuple[str, ...], Path] = {}
        roots = [p for p in (src / "lib.rs", src / "main.rs") if p.exists()]
        for root in roots:
            self.load(root, ())

    def load(self, file: Path, module: tuple[str, ...]) -> None:
        if module in self.modules:
            return
        self.modules[module] = file
        text = strip(file.read_text())
        directory = file.parent if file.name in ("lib.rs", "main.rs", "mod.rs") else file.with_suffix("")
        for decl in MOD_DECL.finditer(text):
            if decl.group("end") != ";":
                continue
            name = decl.group("name")
            if decl.group("path"):
                base = file.parent
                child = (base / decl.group("path")).resolve()
            else:
                child = directory / f"{name}.rs"
                if not child.exists():
                    child = directory / name / "mod.rs"
            if child.exists():
                self.load(child, module + (name,))

    def file_of(self, path: tuple[str, ...]) -> Path | None:
        for length in range(len(path), -1, -1):
            if path[:length] in self.modules:
                return self.modules[path[:length]]
        return None

    def edges(self) -> dict[Path, set[Path]]:
        graph: dict[Path, set[Path]] = {f: set() for f in self.modules.values()}
        for module, file in self.modules.items():
            text = strip(file.read_text())
            for inline_module, paths in scoped_paths(text):
                here = module + inline_module
                for path in paths:
                    target = self.resolve(here, path)
                    if target is not None and target != file:
                        graph[file].add(target)
        return graph

    def resolve(self, here: tuple[str, ...], path: str) -> Path | None:
        parts = [p for p in re.split(r"\s*::\s*", path) if p]
        if not parts:
            return None
        if parts[0] == "crate":
            absolute: list[str] = []
            parts = parts[1:]
        elif parts[0] in ("super", "self"):
            absolute = list(here)
            while parts and parts[0] in ("super", "self"):
                if parts[0] == "super" and absolute:
                    absolute.pop()
                parts = parts[1:]
        else:
            return None
        return self.file_of(tuple(absolute + parts))


def scoped_paths(text: str):
    """Yields (inline module path, [paths]) for the file and each inline module."""
    spans = []  # (start, end, name)
    for decl in MOD_DECL.finditer(text):
        if decl.group("end") == "{":
            open_at = decl.end() - 1
            spans.append((open_at, matching(text, open_at), decl.group("name")))

    def scope_at(position: int) -> tuple[str, ...]:
        names = [name for start, end, name in spans if start < position < end]
        return tuple(names)

    found: dict[tuple[str, ...], list[str]] = {}
    for use in USE.finditer(text):
        tree = use.group(1)
        if not re.match(r"\s*(crate|super|self)\b", tree):
            continue
        found.setdefault(scope_at(use.start()), []).extend(expand_use(tree))
    without_uses = USE.sub(lambda m: " " * len(m.group(0)), text)
    for inline in INLINE_PATH.finditer(without_uses):
        found.setdefault(scope_at(inline.start()), []).append(inline.group(0))
    return found.items()


def cycles(graph: dict[Path, set[Path]]) -> list[list[Path]]:
    index, low, stack, on_stack, out = {}, {}, [], set(), []
    counter = [0]

    def visit(node: Path) -> None:
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for succ in graph.get(node, ()):
            if succ not in index:
                visit(succ)
                low[node] = min(low[node], low[succ])
            elif succ in on_stack:
                low[node] = min(low[node], index[succ])
        if low[node] == index[node]:
            component = []
            while True:
                item = stack.pop()
                on_stack.discard(item)
                component.append(item)
                if item == node:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    sys.setrecursionlimit(10000)
    for node in graph:
        if node not in index:
            visit(node)
    return out


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__.strip().splitlines()[2], file=sys.stderr)
        return 2
    failed = False
    for directory in argv:
        crate = Crate(Path(directory))
        graph = crate.edges()
        for component in cycles(graph):
            failed = True
            names = [os.path.relpath(p) for p in component]
            print(f"import loop in {directory}: " + " <-> ".join(names))
            for file in component:
                targets = sorted(os.path.relpath(t) for t in graph[file] if t in component)
                print(f"    {os.path.relpath(file)} imports {', '.join(targets)}")
        if not failed:
            print(f"{directory}: {len(graph)} files, no import loops")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
