"""The docstrings of the Cython modules' stubs are the extensions' own.

Tools that read stubs instead of importing (mkdocstrings/griffe, IDEs) show
a stub's docstrings, so the public methods and properties of each class in
pyqueue/_core.pyi, _topic.pyi, _log.pyi and _workq.pyi carry the docstring
of the built extension (less the signature line Cython's embedsignature
puts first). tests/test_docstrings.py fails when they differ;

    python tests/typing/stub_docstrings.py

(with the extensions built in place) rewrites the stubs from the
extensions.
"""
import ast
import importlib
import inspect
import os
import re
import sys

MODULES = ("_core", "_topic", "_log", "_workq")
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
_SIGNATURE = re.compile(r"^\w+\.\w+\(.*\)( -> .*)?$")


def runtime_doc(obj):
    """obj's docstring without Cython's signature line, cleaned; None if none."""
    doc = getattr(obj, "__doc__", None)
    if not doc:
        return None
    lines = doc.strip("\n").split("\n")
    if lines and _SIGNATURE.match(lines[0].strip()):
        lines = lines[1:]
    text = inspect.cleandoc("\n".join(lines))
    return text or None


def stub_path(name):
    """The stub beside the imported package (the tree's, or the installed one's)."""
    import pyqueue
    return os.path.join(os.path.dirname(pyqueue.__file__), name + ".pyi")


def stub_members(name):
    """[(class name, member name, ast node)] of the public members of each
    class of a stub (a property counts once, by its getter)."""
    with open(stub_path(name), encoding="utf-8") as f:
        tree = ast.parse(f.read())
    out = []
    for cls in tree.body:
        if not isinstance(cls, ast.ClassDef):
            continue
        for node in cls.body:
            if isinstance(node, ast.FunctionDef) and not node.name.startswith("_") and not any(
                    isinstance(d, ast.Attribute) and d.attr == "setter"
                    for d in node.decorator_list):
                out.append((cls.name, node.name, node))
    return out


def expected(name):
    """{(class, member): runtime docstring} for a stub's public members."""
    mod = importlib.import_module("pyqueue." + name)
    want = {}
    for cls_name, member, _node in stub_members(name):
        obj = getattr(mod, cls_name).__dict__.get(member)
        if obj is None:  # an overload or an inherited member
            continue
        want[(cls_name, member)] = runtime_doc(obj)
    return want


def mismatches():
    """Where a stub's docstring is not the extension's: (module, class.member)."""
    bad = []
    for name in MODULES:
        want = expected(name)
        for cls_name, member, node in stub_members(name):
            if (cls_name, member) in want and ast.get_docstring(node) != want[(cls_name,
                                                                               member)]:
                bad.append(f"{name}.{cls_name}.{member}")
    return bad


def rewrite(name):
    """Put the extension's docstrings into a stub's public members."""
    path = stub_path(name)
    with open(path, encoding="utf-8") as f:
        lines = f.read().split("\n")
    want = expected(name)
    # Bottom up, so that line numbers above stay valid.
    for cls_name, member, node in sorted(stub_members(name), key=lambda m: -m[2].lineno):
        doc = want.get((cls_name, member))
        body = node.body
        first = node.lineno - 1 + len(node.decorator_list)
        first = min([first] + [d.lineno - 1 for d in node.decorator_list])
        indent = " " * (node.col_offset + 4)
        has_doc = ast.get_docstring(node) is not None
        # The signature ends where the body starts (a stub body is `...`,
        # maybe after a docstring).
        end_sig = (body[0].lineno - 1) if has_doc else node.body[-1].lineno - 1
        sig = lines[first:end_sig + 1] if not has_doc else lines[first:end_sig]
        sig_text = "\n".join(sig)
        sig_text = re.sub(r":\s*\.\.\.\s*$", ":", sig_text)
        block = sig_text.split("\n")
        if doc is None:
            block[-1] = block[-1] + " ..."
        else:
            doc_lines = doc.split("\n")
            if len(doc_lines) == 1:
                block.append(f'{indent}"""{doc_lines[0]}"""')
            else:
                block.append(f'{indent}"""{doc_lines[0]}')
                block.extend((indent + ln) if ln else "" for ln in doc_lines[1:])
                block.append(f'{indent}"""')
        lines[first:node.end_lineno] = block
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(lines))


if __name__ == "__main__":
    sys.path.insert(0, ROOT)
    for name in MODULES:
        rewrite(name)
    left = mismatches()
    print("stubs rewritten" + (f"; still different: {left}" if left else ""))
    sys.exit(1 if left else 0)
