# Copyright: the Katana developers
# GNU General Public License v2.0 or later (see LICENSE in the Katana repository)
"""Run the host's katana with --json and read its answer (schema 1, docs/json.md of Katana).

Shared by the modules of katana.hotpatch. Every failure goes through module.fail_json with what
katana said, never a Python traceback.
"""

from __future__ import annotations

import json
import os

SCHEMA = 1
# where pip puts the console script when Katana is installed into a virtual environment of its
# own, as its README suggests; PATH is searched first
OPT_DIRS = ["/opt/katana/bin", "/usr/local/bin"]


class Katana:
    """The katana command of the host, with the options the task asked for."""

    def __init__(self, module, executable=None, timeout=None, require_signature=False):
        self.module = module
        if executable and not (os.path.isfile(executable) and os.access(executable, os.X_OK)):
            # run_command would only say "Error executing command."
            module.fail_json(msg=f"katana: {executable}: no such executable on the host",
                             cmd=[executable])
        self.path = executable or module.get_bin_path("katana", required=True,
                                                      opt_dirs=OPT_DIRS)
        self.config = self._config(timeout, require_signature)

    def _config(self, timeout, require_signature):
        """A -c file for what the task overrides; None when it overrides nothing.

        It is read after /etc/katana and the user's files, so trustedKeys, auditLog and the rest
        of the host's configuration stay as they are."""
        settings = {}
        if timeout is not None:
            settings["maxWaitForPatching"] = timeout
        if require_signature:
            settings["requireSignature"] = True
        if not settings:
            return None
        path = os.path.join(self.module.tmpdir, "katana-task.conf")
        with open(path, "w") as f:
            json.dump(settings, f)
        return path

    def command(self, *args):
        """The argv of one katana command (with --json)."""
        common = ["-c", self.config] if self.config else []
        return [self.path, *common, args[0], "--json", *args[1:]]

    def run(self, *args):
        """Run one katana command; its JSON object, whatever its exit code."""
        argv = self.command(*args)
        rc, out, err = self.module.run_command(argv)
        try:
            data = json.loads(out)
        except ValueError:
            self.module.fail_json(
                msg=f"katana gave no JSON answer (exit code {rc}); does {self.path} support "
                    f"'{args[0]} --json'? {err.strip()}", cmd=argv, rc=rc, stdout=out,
                stderr=err)
        schema = data.get("schema") if isinstance(data, dict) else None
        if schema != SCHEMA:
            self.module.fail_json(msg=f"katana answered with schema {schema!r}, this collection "
                                      f"reads schema {SCHEMA}", cmd=argv)
        data["cmd"] = argv
        data["stderr"] = err
        return data

    def processes(self, program=None):
        """The processes `katana ps --json` lists (with --program, its unpatched ones too)."""
        data = self.run("ps", *(["--program", program] if program else []))
        if data.get("error"):
            self.fail(data)
        return data.get("processes", [])

    def fail(self, data, failures=(), **extra):
        """Fail the host with katana's own message (and each failed process's)."""
        parts = []
        error = data.get("error")
        if error:
            parts.append(error.get("message", ""))
            if error.get("hint"):
                parts.append("hint: " + error["hint"])
        parts += [f"{r.get('pid')}: {r.get('message')}" for r in failures
                  if r.get("message") not in parts]
        msg = "katana: " + "; ".join(p for p in parts if p)
        if not parts:
            msg += f"exit code {data.get('exit_code')}"
        details = dict(rc=data.get("exit_code"), cmd=data.get("cmd"), stderr=data.get("stderr"),
                       results=data.get("results", []))
        details.update(extra)
        self.module.fail_json(msg=msg, **details)


def patch_shas(process):
    """The sha256 of every patch a process carries (from `katana ps --json`)."""
    return {patch.get("po_sha256") for obj in process.get("objects", [])
            for patch in obj.get("patches", [])}
