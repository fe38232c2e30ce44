"""Safe points: is any thread or suspended coroutine in a function we replace; wait until none is.

Unwinds every stack with the CFI of what is mapped (``cfi``, ``unwind``), finds stacks no thread
runs on (``coroutines``), waits for a busy frame to return through a hook (``hooks``);
``safepoint`` decides.
"""
