#!/usr/bin/env python3
"""The layout rules of ARCHITECTURE.md, checked on src/: no file over 500 lines (its
`#[cfg(test)]` module excluded), no function over 100 lines, no import cycle between modules, and
main.rs under 200 lines. Prints what breaks a rule and exits 1 if anything does.

    python3 tools/check_layout.py [--stats] [SRC_DIR]
"""
import re
import sys
from pathlib import Path

ARGS = [a for a in sys.argv[1:] if not a.startswith("--")]
SRC = Path(ARGS[0]).resolve() if ARGS else Path(__file__).resolve().parent.parent / "src"
MAX_FILE, MAX_FN, MAX_MAIN = 500, 100, 200


def module_of(path: Path) -> str:
    """crate::a::b for src/a/b.rs or src/a/b/mod.rs (the binary's files under bin::)."""
    rel = path.relative_to(SRC).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "mod":
        parts.pop()
    if parts in (["lib"], []):
        return "crate"
    if parts[0] in ("main", "cli"):
        return "bin::" + "::".join(parts)
    return "crate::" + "::".join(parts)


def code_lines(text: str) -> list[str]:
    """The file's lines without its trailing `#[cfg(test)] mod tests { ... }`."""
    lines = text.split("\n")
    for i, line in enumerate(lines):
        if line.startswith("#[cfg(test)]") and i + 1 < len(lines) and lines[i + 1].startswith("mod tests"):
            return lines[:i]
    return lines


def long_functions(lines: list[str]):
    """(name, first line, length) of every fn longer than MAX_FN lines: from its `fn` line to the
    closing brace at the same indentation."""
    out = []
    for i, line in enumerate(lines):
        m = re.match(r"^(\s*)(?:pub(?:\([a-z]+\))? )?(?:unsafe )?(?:async )?fn (\w+)", line)
        if not m:
            continue
        indent = m.group(1)
        for j in range(i, len(lines)):
            if lines[j] == indent + "}" or (j > i and lines[j].startswith(indent + "}") and len(lines[j].strip()) <= 2):
                if j - i + 1 > MAX_FN:
                    out.append((m.group(2), i + 1, j - i + 1))
                break
            if j > i and lines[j].rstrip().endswith(";") and lines[i].rstrip().endswith(";"):
                break
    return out


def imports(text: str, module: str, known: set[str]) -> set[str]:
    """The modules this file names: `crate::x::y` and `super::x` paths, resolved to the longest
    known module."""
    found = set()
    base = module.split("::")
    for m in re.finditer(r"\b(crate|super|chatforge)((?:::\w+)+)", text):
        head, tail = m.group(1), m.group(2).split("::")[1:]
        if head == "super":
            parts = base[:-1] + tail
        elif head == "chatforge":
            parts = ["crate"] + tail
        else:
            parts = ["crate"] + tail
        # `use super::{a, b}` and `crate::x::{y, z}`: the braces follow the path.
        rest = text[m.end():m.end() + 200]
        names = [parts]
        if rest.startswith("::{"):
            inner = rest[3:rest.find("}")]
            names = [parts + [n.strip().split("::")[0]] for n in inner.split(",") if n.strip() and n.strip() != "self"]
        for p in names:
            while len(p) > 1 and "::".join(p) not in known:
                p = p[:-1]
            target = "::".join(p)
            if target != module and target in known and target != "crate":
                found.add(target)
    return found


def cycles(graph: dict[str, set[str]]):
    """Pairs of modules that name each other, and longer cycles, found by DFS (parents naming
    their children's items through `mod`/`pub use` are not imports and are not counted)."""
    seen, stack, out = set(), [], []

    def visit(n, on_path):
        seen.add(n)
        stack.append(n)
        on_path.add(n)
        for m in sorted(graph.get(n, ())):
            if m in on_path:
                out.append(stack[stack.index(m):] + [m])
            elif m not in seen:
                visit(m, on_path)
        stack.pop()
        on_path.discard(n)

    for n in sorted(graph):
        if n not in seen:
            visit(n, set())
    return out


def main():
    files = sorted(SRC.rglob("*.rs"))
    known = {module_of(f) for f in files}
    graph, bad, stats = {}, [], []
    for f in files:
        text = f.read_text()
        lines = code_lines(text)
        mod = module_of(f)
        stats.append((len(lines), str(f.relative_to(SRC))))
        if len(lines) > MAX_FILE:
            bad.append(f"{f.relative_to(SRC)}: {len(lines)} lines (over {MAX_FILE})")
        if f.name == "main.rs" and len(lines) > MAX_MAIN:
            bad.append(f"main.rs: {len(lines)} lines (over {MAX_MAIN})")
        for name, line, n in long_functions(lines):
            bad.append(f"{f.relative_to(SRC)}:{line}: fn {name} is {n} lines (over {MAX_FN})")
        # Lines that only declare or re-export children are structure, not imports.
        # Comments (doc links among them) are not imports.
        body = "\n".join(
            l
            for l in lines
            if not l.lstrip().startswith("//")
            and (not re.match(r"^\s*(pub(\([a-z]+\))? )?(mod|use) \w+(::|;)", l) or "crate::" in l or "super::" in l)
        )
        graph[mod] = imports(body, mod, known)
    # A parent re-exporting its children (`pub use child::X`) is not an import cycle.
    for mod in graph:
        graph[mod] = {m for m in graph[mod] if not m.startswith(mod + "::")}
    for c in cycles(graph):
        bad.append("import cycle: " + " -> ".join(c))
    if "--stats" in sys.argv:
        for n, name in sorted(stats)[-10:]:
            print(f"{n:5} {name}")
    for b in bad:
        print(b)
    print(f"{len(files)} files, largest {max(stats)[0]} lines; {len(bad)} problems")
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
