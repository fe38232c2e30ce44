"""SCons tool ``katana``: re-exports ``generate`` and ``exists`` from ``katana.build.scons_tool``.

SCons imports a tool module under the tool's bare name, so while this file runs it *is*
``sys.modules["katana"]``, and SCons has put this file's directory at the head of ``sys.path``:
both would hide the real ``katana`` package. Put the package back (the very same module object
when it was imported before) before importing the tool from it. The same file serves as
``katana/build/site_tools/katana.py`` (for ``toolpath=[katana.build.scons_tool.TOOLPATH]``) and as
``site_scons/site_tools/katana/__init__.py`` in Katana's own repository.
"""

import os
import sys


def _restore_katana_package():
    tool = sys.modules.get("katana.build.scons_tool")
    if __name__ == "katana":
        del sys.modules["katana"]
    if tool is not None:
        sys.modules["katana"] = tool.PACKAGE
        return
    here = os.path.dirname(os.path.abspath(__file__))
    tooldir = os.path.dirname(here) if os.path.basename(__file__) == "__init__.py" else here
    hidden = {tooldir, os.path.realpath(tooldir)}
    saved = sys.path[:]
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) not in hidden]
    try:
        import katana
    finally:
        sys.path[:] = saved
    # submodules imported before SCons hid the package stay usable as its attributes
    for name, module in list(sys.modules.items()):
        parent, _, child = name.rpartition(".")
        if parent == "katana" and not hasattr(katana, child):
            setattr(katana, child, module)


_restore_katana_package()

from katana.build.scons_tool import exists, generate  # noqa: E402,F401
