"""The running process: ptrace, /proc, memory, code run inside it, room for a patch, symbols.

Nothing here knows what a patch is; ``katana.live`` and ``katana.safety`` build on it.
"""
