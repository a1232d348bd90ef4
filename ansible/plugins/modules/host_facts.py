#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: fireclaw contributors
# MIT License (see LICENSE)

from __future__ import absolute_import, division, print_function
__metaclass__ = type

DOCUMENTATION = r'''
---
module: host_facts
short_description: What placing fireclaw instances needs to know about a host
version_added: "0.3.0"
description:
  - Runs C(fireclaw host facts --json) and sets it as the C(fireclaw) fact.
  - Memory committed counts running and suspended instances (a suspended one takes its
    memory back when it resumes); stopped ones are reported apart.
  - Changes nothing.
options:
  fireclaw:
    description: The fireclaw binary.
    type: path
    default: /usr/local/bin/fireclaw
author:
  - fireclaw contributors (@fireclaw)
'''

EXAMPLES = r'''
- name: Read the host's fireclaw facts
  fireclaw.fleet.host_facts:

- name: Show what is free
  ansible.builtin.debug:
    msg: "{{ ansible_facts.fireclaw.memory.uncommitted_mib }} MiB uncommitted"
'''

RETURN = r'''
ansible_facts:
  description: The facts.
  returned: always
  type: dict
  contains:
    fireclaw:
      description: What C(fireclaw host facts --json) prints (memory, disk, addresses, ports, instances, versions, KVM, baked images).
      returned: always
      type: dict
'''

import json

from ansible.module_utils.basic import AnsibleModule


def main():
    module = AnsibleModule(
        argument_spec=dict(
            fireclaw=dict(type='path', default='/usr/local/bin/fireclaw'),
        ),
        supports_check_mode=True,
    )
    rc, stdout, stderr = module.run_command([module.params['fireclaw'], 'host', 'facts', '--json'])
    if rc != 0:
        module.fail_json(msg='fireclaw host facts failed: %s' % stderr.strip(), rc=rc)
    try:
        facts = json.loads(stdout)
    except ValueError:
        module.fail_json(msg='fireclaw host facts printed no JSON')
    module.exit_json(changed=False, ansible_facts=dict(fireclaw=facts))


if __name__ == '__main__':
    main()
