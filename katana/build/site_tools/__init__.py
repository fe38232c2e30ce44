"""Where SCons finds the katana tool: ``toolpath=[katana.build.scons_tool.TOOLPATH]``.

A package only so that wheels ship ``katana.py``; nothing imports it as ``katana.site_tools``.
"""
