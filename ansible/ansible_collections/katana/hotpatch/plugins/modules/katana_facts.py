#!/usr/bin/python
# Copyright: the Katana developers
# GNU General Public License v2.0 or later (see LICENSE in the Katana repository)

from __future__ import annotations

DOCUMENTATION = r"""
module: katana_facts
short_description: The hot-patched processes of the host, as Katana sees them
version_added: "0.1.0"
description:
  - Sets the fact C(katana_processes) from C(katana ps --json) on the host (schema 1,
    C(docs/json.md) in the Katana repository), every process that carries Katana patches, with
    its program, user, the build each patched object behaves as now (C(effective)) and its
    patches (from, to, when, by whom, signer).
  - With O(program), the unpatched processes of that program too, and which build each runs.
  - Reads only; nothing is stopped or written.
options:
  program:
    description: Also list the unpatched processes of this program.
    type: str
  katana:
    description:
      - The katana command on the host; by default C(katana) on the PATH, then in
        C(/opt/katana/bin) and C(/usr/local/bin).
    type: path
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
  - ansible.builtin.action_common_attributes.facts
attributes:
  check_mode:
    support: full
  diff_mode:
    support: none
  facts:
    support: full
  platform:
    platforms: posix
requirements:
  - Katana (the C(katana) command, with C(ps --json)) on the host.
seealso:
  - module: katana.hotpatch.katana_patch
author:
  - The Katana developers
"""

EXAMPLES = r"""
- name: Read the patched processes
  katana.hotpatch.katana_facts:

- name: Every kvd, and the build it behaves as
  katana.hotpatch.katana_facts:
    program: kvd

- name: Show them
  ansible.builtin.debug:
    msg: "{{ item.pid }} {{ item.program }} runs {{ item.objects | map(attribute='effective') }}"
  loop: "{{ katana_processes }}"
"""

RETURN = r"""
ansible_facts:
  description: Facts set on the host.
  returned: always
  type: dict
  contains:
    katana_processes:
      description:
        - The processes, as C(katana ps --json) lists them (C(pid), C(program), C(exe),
          C(user), C(uid), C(build_id), C(patched), C(objects) with C(object), C(kind),
          C(effective), C(effective_build_id) and C(patches)).
      type: list
      elements: dict
      sample:
        - {pid: 4242, program: kvd, exe: /srv/kvd/kvd, user: svc, uid: 998, build_id: ab12...,
           patched: true, objects: [{object: kvd, kind: program, effective: v1,
           patches: [{from: v0, to: v1, po_sha256: 9f2c..., user: root, signer: unsigned}]}]}
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.katana.hotpatch.plugins.module_utils.katana import Katana


def main():
    module = AnsibleModule(
        argument_spec=dict(program=dict(type="str"), katana=dict(type="path")),
        supports_check_mode=True,
    )
    katana = Katana(module, module.params["katana"])
    processes = katana.processes(module.params["program"])
    module.exit_json(changed=False, ansible_facts={"katana_processes": processes})


if __name__ == "__main__":
    main()
