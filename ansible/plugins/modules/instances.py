#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: fireclaw contributors
# MIT License (see LICENSE)

from __future__ import absolute_import, division, print_function
__metaclass__ = type

DOCUMENTATION = r'''
---
module: instances
short_description: Make a host's fireclaw instances match what the play declares
version_added: "0.3.0"
description:
  - Writes the host's declared instances to a C(fireclaw apply) file (mode 0600; secrets only
    by reference) and runs C(fireclaw apply) on it.
  - The secret values go to C(fireclaw apply) in its own environment, through the module's
    C(run_command), never on a command line, never in a file, and never through the play's
    C(environment) keyword, which C(-vvv) shows.
  - Every secret sub-option is C(no_log), so the invocation log on the managed host is masked.
  - Check mode and diff mode use C(fireclaw apply --dry-run).
options:
  instances:
    description: The instances this host should have.
    type: list
    elements: dict
    required: true
    suboptions:
      id:
        description: The instance id (C([a-z0-9_-]+)).
        type: str
        required: true
      state:
        description: What the instance should be.
        type: str
        choices: [running, stopped, suspended, absent]
        default: running
      settings:
        description:
          - Any setting C(fireclaw setup) takes, by its name in the apply file (C(model),
            C(skills), C(vm_mem_mib), C(disk_size), C(telegram_users), ...).
          - Secrets never go here; see I(secrets).
        type: dict
        default: {}
      secrets:
        description: The instance's secrets (keep them in Ansible Vault).
        type: dict
        default: {}
        suboptions:
          anthropic_api_key:
            description: Anthropic API key.
            type: str
          openai_api_key:
            description: OpenAI API key.
            type: str
          minimax_api_key:
            description: MiniMax API key.
            type: str
          telegram_token:
            description: Telegram bot token (with C(telegram_users) in I(settings)).
            type: str
  prune:
    description: Also remove instances this host has that the list does not name, when apply made them.
    type: bool
    default: false
  jobs:
    description: How many instances C(fireclaw apply) works on at once.
    type: int
    default: 2
  backup_dir:
    description: Where an instance is exported before it is removed (default C(STATE_ROOT/backups)).
    type: path
  no_backup:
    description: Remove instances without exporting them first.
    type: bool
    default: false
  file:
    description: Where the apply file is written.
    type: path
    default: /etc/fireclaw/instances.toml
  fireclaw:
    description: The fireclaw binary.
    type: path
    default: /usr/local/bin/fireclaw
author:
  - fireclaw contributors (@fireclaw)
'''

EXAMPLES = r'''
- name: Converge this host's agents
  fireclaw.fleet.instances:
    instances:
      - id: support-bot
        settings:
          model: anthropic/claude-opus-4-6
          vm_mem_mib: 2048
        secrets:
          anthropic_api_key: "{{ vault_support_bot_anthropic_key }}"
      - id: old-bot
        state: absent
'''

RETURN = r'''
plan:
  description: What C(fireclaw apply) planned for each instance (action, reason, steps, problems).
  returned: always
  type: list
  elements: dict
outcomes:
  description: How each instance's steps went (not in check mode).
  returned: when changes were made
  type: list
  elements: dict
file:
  description: The apply file written.
  returned: always
  type: str
'''

import json
import os
import tempfile

from ansible.module_utils.basic import AnsibleModule

SECRET_KEYS = ('anthropic_api_key', 'openai_api_key', 'minimax_api_key', 'telegram_token')


def toml_value(value):
    """A TOML literal for a setting's value (strings, integers, booleans, lists of them)."""
    if isinstance(value, bool):
        return 'true' if value else 'false'
    if isinstance(value, int):
        return str(value)
    if isinstance(value, (list, tuple)):
        return '[' + ', '.join(toml_value(item) for item in value) + ']'
    return json.dumps(str(value))


def render(instances):
    """The apply file and the environment holding the secrets it names."""
    lines = ['# Written by the fireclaw.fleet.instances module; secrets are references only.']
    environment = {}
    for number, instance in enumerate(instances):
        lines.append('')
        lines.append('[instances.%s]' % json.dumps(instance['id']))
        lines.append('state = %s' % toml_value(instance['state']))
        for key in sorted(instance['settings'] or {}):
            if key in SECRET_KEYS:
                raise ValueError('instance %s: %s is a secret; give it under secrets' % (instance['id'], key))
            lines.append('%s = %s' % (key, toml_value(instance['settings'][key])))
        for key in SECRET_KEYS:
            value = (instance['secrets'] or {}).get(key)
            if value:
                name = 'FIRECLAW_SECRET_%d_%s' % (number, key.upper())
                environment[name] = value
                lines.append('%s = { env = "%s" }' % (key, name))
    return '\n'.join(lines) + '\n', environment


def write_private(module, path, text):
    """Writes the file with mode 0600 through a temporary file in its directory."""
    directory = os.path.dirname(path)
    if not os.path.isdir(directory):
        os.makedirs(directory, 0o700)
    handle, temporary = tempfile.mkstemp(dir=directory, prefix='.instances-')
    try:
        os.fchmod(handle, 0o600)
        os.write(handle, text.encode('utf-8'))
        os.fsync(handle)
    finally:
        os.close(handle)
    module.atomic_move(temporary, path)
    os.chmod(path, 0o600)


def main():
    secrets_spec = dict((key, dict(type='str', no_log=True)) for key in SECRET_KEYS)
    module = AnsibleModule(
        argument_spec=dict(
            instances=dict(
                type='list', elements='dict', required=True,
                options=dict(
                    id=dict(type='str', required=True),
                    state=dict(type='str', default='running', choices=['running', 'stopped', 'suspended', 'absent']),
                    settings=dict(type='dict', default={}),
                    secrets=dict(type='dict', default={}, no_log=False, options=secrets_spec),
                ),
            ),
            prune=dict(type='bool', default=False),
            jobs=dict(type='int', default=2),
            backup_dir=dict(type='path'),
            no_backup=dict(type='bool', default=False),
            file=dict(type='path', default='/etc/fireclaw/instances.toml'),
            fireclaw=dict(type='path', default='/usr/local/bin/fireclaw'),
        ),
        supports_check_mode=True,
    )
    params = module.params
    try:
        text, environment = render(params['instances'])
    except ValueError as error:
        module.fail_json(msg=str(error))
    for value in environment.values():
        module.no_log_values.add(value)
    path = params['file']
    if not module.check_mode:
        write_private(module, path, text)
        apply_file = path
    else:
        # The dry run reads a private copy: check mode changes nothing on the host.
        handle, apply_file = tempfile.mkstemp(prefix='fireclaw-apply-', suffix='.toml')
        os.fchmod(handle, 0o600)
        os.write(handle, text.encode('utf-8'))
        os.close(handle)
    command = [params['fireclaw'], 'apply', '-f', apply_file, '--json', '--quiet',
               '--jobs', str(params['jobs'])]
    if module.check_mode:
        command.append('--dry-run')
    if params['prune']:
        command.append('--prune')
    if params['no_backup']:
        command.append('--no-backup')
    elif params['backup_dir']:
        command.extend(['--backup-dir', params['backup_dir']])
    try:
        rc, stdout, stderr = module.run_command(command, environ_update=environment)
    finally:
        if module.check_mode:
            os.unlink(apply_file)
    try:
        report = json.loads(stdout)
    except ValueError:
        module.fail_json(msg='fireclaw apply failed: %s' % (stderr.strip() or stdout.strip()), rc=rc)
    result = dict(
        changed=bool(report.get('changed')),
        plan=report.get('instances', []),
        outcomes=report.get('outcomes') or [],
        file=path,
    )
    if module._diff:
        lines = []
        for planned in result['plan']:
            lines.append('%s: %s (%s)' % (planned['id'], planned['action'], planned['reason']))
            lines.extend('    fireclaw %s' % step for step in planned.get('steps', []))
        result['diff'] = dict(prepared='\n'.join(lines) + '\n')
    if rc != 0:
        problems = report.get('problems') or []
        failed = [o for o in result['outcomes'] if not o.get('done')]
        module.fail_json(
            msg='fireclaw apply: %s' % ('; '.join(problems) or '; '.join(
                '%s: %s' % (o['id'], o.get('error')) for o in failed) or stderr.strip()),
            rc=rc, **result)
    module.exit_json(**result)


if __name__ == '__main__':
    main()
