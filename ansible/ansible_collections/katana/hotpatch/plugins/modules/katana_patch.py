#!/usr/bin/python
# Copyright: the Katana developers
# GNU General Public License v2.0 or later (see LICENSE in the Katana repository)

from __future__ import annotations

DOCUMENTATION = r"""
module: katana_patch
short_description: Hot-patch running processes with a Katana Patch Object, or revert it
version_added: "0.1.0"
description:
  - Applies a Katana Patch Object (PO, made by C(scons patch) or C(katana generate)) to processes
    that run on the host, without restarting them, through the host's C(katana) command; or
    takes it out again.
  - Idempotent. A process that already runs the PO's TO build is C(ok), not C(changed); so is,
    with O(state=reverted), a process that does not carry the PO.
  - In check mode it runs C(katana check), which makes every verification apply makes (policy
    and signature, build-id, symbols, which functions are in use) without a write and without a
    stop longer than one safe-point probe. A process apply would patch reports C(changed).
    With O(state=reverted), check mode reports the processes that carry the PO (from
    C(katana ps)); whether katana would refuse to take it out (it moved data to a new layout,
    or later patches depend on it) shows only when it runs.
  - The host fails when any process fails, with katana's message for each; the processes that
    failed run on exactly as before.
  - It reads C(katana ... --json) (schema 1, C(docs/json.md) in the Katana repository).
options:
  patch:
    description:
      - Path of the PO on the host.
      - With O(src), where the copy goes (and its C(.sig)); it is copied only when its bytes
        differ.
    type: path
  src:
    description:
      - A PO on the controller (looked up like C(copy)'s O(src), in the play's C(files/)), copied
        to the host with its signature C(PATCH.sig) when there is one next to it.
      - Without O(patch) the copy goes to the task's temporary directory, removed afterwards.
    type: path
  target:
    description:
      - C(all) (every process of the host that runs the PO's program, or maps its library; those
        of another build are skipped, not failed), or process ids.
    type: list
    elements: str
    default: [all]
  program:
    description:
      - With O(target=all), only processes of this program (as C(katana ps --program) names
        them), for a PO of a library that several programs map.
    type: str
  user:
    description: With O(target=all), only processes of this user (a name or a uid).
    type: str
  exe:
    description: With O(target=all), only processes that run this executable file.
    type: path
  state:
    description:
      - C(applied), the processes run the PO's TO build; C(reverted), the PO is taken out of the
        processes that carry it (C(katana revert PID PATCH)).
    type: str
    choices: [applied, reverted]
    default: applied
  timeout:
    description:
      - Seconds to wait for a safe point in each process (katana's C(maxWaitForPatching));
        the host's configuration decides when not given.
    type: float
  require_signature:
    description:
      - Refuse the PO unless it is signed by a key of the host's C(trustedKeys) (katana's
        C(requireSignature)), before any process is touched. The host's own configuration may
        require it already; this cannot turn that off.
    type: bool
    default: false
  katana:
    description:
      - The katana command on the host; by default C(katana) on the PATH, then in
        C(/opt/katana/bin) and C(/usr/local/bin).
    type: path
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
attributes:
  check_mode:
    support: full
  diff_mode:
    support: none
  platform:
    platforms: posix
requirements:
  - Katana (the C(katana) command, with C(check), C(ps) and C(--json)) on the host.
  - ptrace rights over the processes (root, or the same user with Yama's ptrace_scope at 0).
notes:
  - Roll a patch out in batches, and stop on failures, with the play's C(serial) and
    C(max_fail_percentage) (see C(docs/fleet.md) in the Katana repository).
seealso:
  - module: katana.hotpatch.katana_facts
author:
  - The Katana developers
"""

EXAMPLES = r"""
- name: Patch every kvd of the host
  katana.hotpatch.katana_patch:
    patch: /var/lib/katana/kvd-v0-v1.po

- name: Copy a signed PO from the controller and apply it, refusing it unsigned
  katana.hotpatch.katana_patch:
    src: patches/kvd-v0-v1.po
    patch: /var/lib/katana/kvd-v0-v1.po
    require_signature: true
    timeout: 10

- name: Patch one process, only processes of user svc, or only one executable
  katana.hotpatch.katana_patch:
    patch: /var/lib/katana/kvd-v0-v1.po
    target: "{{ kvd_pid }}"

- name: Take the patch out again
  katana.hotpatch.katana_patch:
    patch: /var/lib/katana/kvd-v0-v1.po
    state: reverted
"""

RETURN = r"""
results:
  description:
    - One entry per process, as katana reports it. C(result) is C(applied), C(ready) (check
      mode, apply would go ahead), C(unchanged) (already the TO build, or nothing to revert),
      C(skipped) (another build, with O(target=all)), C(reverted), C(failed) or C(exited).
    - C(code) is the exit code katana would give for this process alone, C(message) its words.
  returned: always
  type: list
  elements: dict
  sample:
    - {pid: 4242, result: applied, code: 0, message: "applied kvd v0 -> v1", stopped_ms: 0.6,
       functions: [lookup, run_get], busy: []}
summary:
  description:
    - How many processes ended in each result, and C(total).
    - With O(state=applied), katana's own (C(applied) or, in check mode, C(ready), C(unchanged),
      C(skipped), C(failed), C(exited)); with O(state=reverted), C(reverted), C(ready) (check
      mode), C(unchanged), C(failed) and C(exited).
  returned: when katana was run on processes
  type: dict
  sample: {applied: 1, unchanged: 0, skipped: 0, failed: 0, exited: 0, total: 1}
object:
  description: The program (or library) the PO patches.
  returned: when O(state=applied) and the PO could be read
  type: str
  sample: kvd
from:
  description: The label of the build the PO applies to.
  returned: when O(state=applied) and the PO could be read
  type: str
  sample: v0
to:
  description: The label of the build the processes run once patched.
  returned: when O(state=applied) and the PO could be read
  type: str
  sample: v1
po_sha256:
  description: The sha256 of the PO's bytes (what C(katana status) records).
  returned: always
  type: str
patch:
  description: The path of the PO on the host.
  returned: always
  type: str
copied:
  description: Whether O(src) was copied to O(patch) (or, in check mode, would be).
  returned: always
  type: bool
cmd:
  description: The katana command lines run.
  returned: always
  type: list
  elements: list
"""

import hashlib
import os
import shutil

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.katana.hotpatch.plugins.module_utils.katana import Katana, patch_shas

# results that mean the process is (or, in check mode, would be) changed
CHANGES = {"applied", "ready", "reverted"}
# results that are no failure of the host
OK = CHANGES | {"unchanged", "exited"}


def sha256(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def same_bytes(a, b):
    return os.path.exists(b) and sha256(a) == sha256(b)


def stage(module):
    """The PO to hand to katana, and whether src was (or would be) copied to patch."""
    src, patch = module.params["src"], module.params["patch"]
    if patch and os.path.isdir(patch):
        module.fail_json(msg=f"{patch} is a directory: give the path of the PO itself "
                             "(its file name too)")
    if not src:
        if not os.path.isfile(patch):
            module.fail_json(msg=f"{patch}: no such Patch Object on the host")
        return patch, False
    if not patch:
        return src, False
    sig, dest_sig = src + ".sig", patch + ".sig"
    sig_same = (same_bytes(sig, dest_sig) if os.path.exists(sig)
                else not os.path.exists(dest_sig))
    if same_bytes(src, patch) and sig_same:
        return patch, False
    if module.check_mode:
        return src, True  # katana check reads the same bytes where they are now
    _install(module, src, patch)
    if os.path.exists(sig):
        _install(module, sig, dest_sig)
    elif os.path.exists(dest_sig):
        os.unlink(dest_sig)  # a stale signature would make the new PO look tampered with
    return patch, True


def _install(module, src, dest):
    """Copy src over dest in one rename: katana never reads half a PO."""
    directory = os.path.dirname(os.path.abspath(dest))
    if not os.path.isdir(directory):
        module.fail_json(msg=f"{dest}: directory {directory} does not exist on the host")
    tmp = os.path.join(directory, f".{os.path.basename(dest)}.{os.getpid()}.tmp")
    shutil.copyfile(src, tmp)
    os.chmod(tmp, 0o644)
    module.atomic_move(tmp, dest)


def targets(module):
    """katana's target arguments: PIDs, or all with its filters."""
    target, p = module.params["target"], module.params
    if not target:
        module.fail_json(msg="target must be 'all' or process ids, not an empty list")
    filters = [p["program"], p["user"], p["exe"]]
    if target == ["all"]:
        args = ["all"]
        if p["user"]:
            args += ["--user", p["user"]]
        if p["exe"]:
            args += ["--exe", p["exe"]]
        return args
    if not all(t.isdigit() for t in target):
        module.fail_json(msg=f"target must be 'all' or process ids, not {target}")
    if any(filters):
        module.fail_json(msg="program, user and exe narrow target: all; "
                             f"they cannot be given with process ids ({', '.join(target)})")
    return target


def kept(process, module):
    """Whether a process of `katana ps` passes program, user and exe, as katana's all would."""
    program, user, exe = (module.params[k] for k in ("program", "user", "exe"))
    if program and process.get("program") != program:
        return False
    if user and user not in (process.get("user"), str(process.get("uid"))):
        return False
    if exe:
        try:  # the same file, as katana's --exe compares it (device and inode)
            return os.path.samefile(exe, f"/proc/{process['pid']}/exe")
        except OSError:
            return False
    return True


def apply(katana, module, po):
    """state=applied: katana apply, or katana check in check mode."""
    args = targets(module)
    if args[0] == "all" and module.params["program"]:
        # katana's all is every process of the PO's program; program narrows a library's PO
        args = [str(p["pid"]) for p in katana.processes(module.params["program"])
                if kept(p, module)]
        if not args:
            return {"results": [], "summary": {"total": 0}}, False
    data = katana.run("check" if module.check_mode else "apply", po, *args)
    if module.params["target"] == ["all"]:
        exited_meanwhile(data.get("results", []))
    return data, True


def gone(pid):
    """Whether a process has exited (no /proc entry, or a zombie)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except (OSError, IndexError):
        return True


def exited_meanwhile(results):
    """PIDs this module found with katana ps and handed to katana: one that exited before
    katana reached it is what katana's own all calls "exited" (no failure), not a wrong PID."""
    for r in results:
        if r.get("result") == "failed" and r.get("code") == 8 and gone(r.get("pid")):
            r["result"] = "exited"


def revert(katana, module, po):
    """state=reverted: katana revert PID PATCH for each process that carries this PO."""
    sha = sha256(po)
    args = targets(module)
    listed = katana.run("list", po)  # a damaged PO fails the host, as it does for apply
    if listed.get("error"):
        katana.fail(listed)
    processes = katana.processes(module.params["program"])
    carrying = {p["pid"] for p in processes if sha in patch_shas(p)}
    if args[0] == "all":
        pids = sorted(p["pid"] for p in processes if p["pid"] in carrying and kept(p, module))
    else:
        pids = [int(a) for a in args]
    results, cmds = [], [listed["cmd"]]
    for pid in pids:
        if pid not in carrying:
            results.append(not_carrying(katana, pid, cmds))
        elif module.check_mode:
            results.append({"pid": pid, "result": "ready", "code": 0,
                            "message": "would revert this patch"})
        else:
            data = katana.run("revert", str(pid), po)
            cmds.append(data["cmd"])
            if args[0] == "all":
                exited_meanwhile(data.get("results", []))
            if data.get("error") and not data.get("results"):
                katana.fail(data, cmd=cmds)
            results += data.get("results", [])
    counts = {k: sum(r.get("result") == k for r in results)
              for k in ("reverted", "ready", "unchanged", "failed", "exited")}
    return {"results": results, "cmd": cmds, "po_sha256": sha,
            "summary": {**counts, "total": len(results)}}


def not_carrying(katana, pid, cmds):
    """The result of a process given by PID that does not carry the PO: unchanged, or, when
    it is no process katana can read (gone, a kernel thread), failed with katana's words."""
    data = katana.run("status", str(pid))
    cmds.append(data["cmd"])
    error = data.get("error")
    if error:
        return {"pid": pid, "result": "failed", "code": error.get("code"),
                "message": error.get("message")}
    return {"pid": pid, "result": "unchanged", "code": 0,
            "message": "does not carry this patch"}


def main():
    module = AnsibleModule(
        argument_spec=dict(
            patch=dict(type="path"),
            src=dict(type="path"),
            target=dict(type="list", elements="str", default=["all"]),
            program=dict(type="str"),
            user=dict(type="str"),
            exe=dict(type="path"),
            state=dict(type="str", choices=["applied", "reverted"], default="applied"),
            timeout=dict(type="float"),
            require_signature=dict(type="bool", default=False),
            katana=dict(type="path"),
        ),
        required_one_of=[("patch", "src")],
        supports_check_mode=True,
    )
    p = module.params
    if p["timeout"] is not None and not 0 < p["timeout"] <= 3600:
        module.fail_json(msg=f"timeout must be > 0 and <= 3600 seconds, not {p['timeout']}")
    katana = Katana(module, p["katana"], p["timeout"], p["require_signature"])
    po, copied = stage(module)
    if p["state"] == "applied":
        data, ran = apply(katana, module, po)
        cmds = [data["cmd"]] if ran else []
    else:
        data = revert(katana, module, po)
        cmds = data["cmd"]
    results = data.get("results", [])
    # katana's exit code is no guide (a PID already patched is "unchanged" with code 9): the
    # results are. A process named by PID that runs another build is "skipped", and a failure
    # here; with all, "skipped" is the other builds', as "exited" is counted, never a failure.
    fine = OK | ({"skipped"} if p["target"] == ["all"] else set())
    failures = [r for r in results if r.get("result") not in fine]
    changed = copied or any(r.get("result") in CHANGES for r in results)
    out = dict(results=results, patch=p["patch"] or po, copied=copied, cmd=cmds,
               po_sha256=data.get("po_sha256") or sha256(po))
    for key in ("summary", "object", "from", "to"):
        if key in data:
            out[key] = data[key]
    if failures or (data.get("error") and not results):
        katana.fail(data, failures, changed=changed, **out)
    module.exit_json(changed=changed, **out)


if __name__ == "__main__":
    main()
