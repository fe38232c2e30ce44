"""The build side: the flags patching needs, the SCons tool that guarantees them, snapshots."""
