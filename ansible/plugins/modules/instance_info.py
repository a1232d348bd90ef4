#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: fireclaw contributors
# MIT License (see LICENSE)

from __future__ import absolute_import, division, print_function
__metaclass__ = type

DOCUMENTATION = r'''
---
module: instance_info
short_description: The fireclaw instances of a host, with their state and health
version_added: "0.3.0"
description:
  - Runs C(fireclaw list --json) (or C(fireclaw status ID --json)) and returns what it reports.
  - Changes nothing.
options:
  id:
    description: One instance; all of them when left out.
    type: str
  fireclaw:
    description: The fireclaw binary.
    type: path
    default: /usr/local/bin/fireclaw
author:
  - fireclaw contributors (@fireclaw)
'''

EXAMPLES = r'''
- name: List the agents of this host
  fireclaw.fleet.instance_info:
  register: agents

- name: One agent
  fireclaw.fleet.instance_info:
    id: support-bot
  register: support_bot
'''

RETURN = r'''
instances:
  description: Each instance as C(fireclaw list --json) reports it (id, ip, port, vm, health, phase, ...).
  returned: always
  type: list
  elements: dict
'''

import json

from ansible.module_utils.basic import AnsibleModule


def main():
    module = AnsibleModule(
        argument_spec=dict(
            id=dict(type='str'),
            fireclaw=dict(type='path', default='/usr/local/bin/fireclaw'),
        ),
        supports_check_mode=True,
    )
    rc, stdout, stderr = module.run_command([module.params['fireclaw'], 'list', '--json'])
    if rc != 0:
        module.fail_json(msg='fireclaw list failed: %s' % stderr.strip(), rc=rc)
    try:
        instances = json.loads(stdout).get('instances', [])
    except ValueError:
        module.fail_json(msg='fireclaw list printed no JSON')
    wanted = module.params['id']
    if wanted is not None:
        instances = [i for i in instances if i.get('id') == wanted]
        if not instances:
            module.fail_json(msg='no instance %s on this host' % wanted)
    module.exit_json(changed=False, instances=instances)


if __name__ == '__main__':
    main()
