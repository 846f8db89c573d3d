"""What an index's HDF5 files may hold: their own bytes only.

HDF5 can point outside a file: a dataset may keep its values in other files (external storage), map them
from other datasets (a virtual dataset), and a name may be a soft link or a link into another file. An index
file that does any of these would make a query, ``verify`` or ``export`` read a file outside the index (and
its checksums would vouch for bytes they never covered), so the reader and ``verify`` refuse such a file.
"""

from __future__ import annotations

from pathlib import Path

import h5py


def foreign_storage(f: h5py.File) -> str | None:
    """The first name in ``f`` that is not a hard link to a group or to a dataset stored in ``f`` itself (a
    soft or external link, a virtual dataset, a dataset with external storage), or ``None``. Every group is
    walked once (a group linked into itself is no loop)."""
    seen: set[int] = set()
    groups: list[h5py.Group] = [f]
    while groups:
        group = groups.pop()
        if hash(group.id) in seen:
            continue
        seen.add(hash(group.id))
        for name in group:
            full = f"{group.name.rstrip('/')}/{name}"
            link = group.get(name, getlink=True)
            if isinstance(link, h5py.SoftLink):
                return f"{full!r} is a soft link (to {link.path!r})"
            if isinstance(link, h5py.ExternalLink):
                return f"{full!r} is a link into another file ({link.filename!r})"
            obj = group.get(name)
            if isinstance(obj, h5py.Group):
                groups.append(obj)
            elif isinstance(obj, h5py.Dataset):
                plist = obj.id.get_create_plist()
                if plist.get_layout() == h5py.h5d.VIRTUAL:
                    return f"{full!r} is a virtual dataset (its values are read from other datasets or files)"
                if plist.get_external_count() > 0:
                    return f"{full!r} keeps its values in external files ({plist.get_external(0)[0].decode()!r})"
    return None


def foreign_problem(path: Path, f: h5py.File) -> str | None:
    """:func:`foreign_storage` of ``f`` as one line naming ``path``, or ``None``."""
    found = foreign_storage(f)
    return None if found is None else f"{path}: {found}: an index file holds its own values only; rebuild the index"
