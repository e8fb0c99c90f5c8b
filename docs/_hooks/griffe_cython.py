"""Griffe extension (mkdocs.yml, mkdocstrings `extensions`): drops the
signature line Cython's `embedsignature` puts first in the docstring of a
compiled method (`RingQueue.put_many(self, objs, block=True, timeout=None)`):
the reference shows the signature already (from the .pyi stub), and the
line names the private base class instead of the public one."""
import re

import griffe

SIGNATURE = re.compile(r"^[A-Za-z_][\w.]*\(.*\)(\s*->\s*.+)?$")


def _strip(obj, seen):
    if id(obj) in seen:
        return
    seen.add(id(obj))
    doc = obj.docstring
    if doc is not None:
        first, _, rest = doc.value.partition("\n")
        if SIGNATURE.match(first.strip()):
            doc.value = rest.lstrip("\n")
    for member in obj.members.values():
        if not member.is_alias:
            _strip(member, seen)


class StripCythonSignatures(griffe.Extension):
    def on_package(self, *, pkg, **kwargs):       # griffe >= 1.14
        _strip(pkg, set())

    def on_package_loaded(self, *, pkg, **kwargs):  # older griffe
        _strip(pkg, set())
