"""Live patching of one process: plan, stage, commit at a safe point, record; revert; status.

The pipeline of ``katana apply``: ``plan`` (before the stop), ``loader`` (link at the final
address), ``commit`` (stage while running, switch at the safe point), ``transfer`` (state),
``record`` (what was done, kept in the target), ``command`` (many processes, exit codes).
"""
