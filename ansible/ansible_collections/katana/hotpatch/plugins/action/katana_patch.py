# Copyright: the Katana developers
# GNU General Public License v2.0 or later (see LICENSE in the Katana repository)
"""The controller side of katana_patch: with src, send the PO (and its .sig) to the host first."""

from __future__ import annotations

import os

from ansible.errors import AnsibleActionFail, AnsibleError
from ansible.plugins.action import ActionBase


class ActionModule(ActionBase):
    TRANSFERS_FILES = True

    def run(self, tmp=None, task_vars=None):
        task_vars = task_vars or {}
        super().run(tmp, task_vars)
        del tmp  # no longer has any effect
        args = self._task.args.copy()
        try:
            if args.get("src"):
                args["src"] = self._send(args["src"])
            return self._execute_module(module_name="katana.hotpatch.katana_patch",
                                        module_args=args, task_vars=task_vars)
        finally:
            self._remove_tmp_path(self._connection._shell.tmpdir)

    def _send(self, src):
        """Copy the PO to the task's temporary directory on the host, under its own name (the
        record katana keeps in the process names it), with its signature when it has one."""
        try:
            local = self._find_needle("files", os.path.expanduser(src))
        except AnsibleError as e:  # its own words say where it looked
            raise AnsibleActionFail(f"src {src}: {e}") from None
        shell = self._connection._shell
        remote = shell.join_path(shell.tmpdir, os.path.basename(local))
        self._transfer_file(local, remote)
        sent = [remote]
        if os.path.isfile(local + ".sig"):
            self._transfer_file(local + ".sig", remote + ".sig")
            sent.append(remote + ".sig")
        self._fixup_perms2((shell.tmpdir, *sent))
        return remote
