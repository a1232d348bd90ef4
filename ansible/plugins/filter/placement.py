# -*- coding: utf-8 -*-
# Copyright: fireclaw contributors
# MIT License (see LICENSE)

from __future__ import absolute_import, division, print_function
__metaclass__ = type

DOCUMENTATION = r'''
name: placement
short_description: Decide which host each declared fireclaw instance goes to
version_added: "0.3.0"
description:
  - An instance declared with a C(host) stays there.
  - An instance whose id exists on any host, in any state, counts as placed there.
  - An instance an earlier run placed (I(previous)) stays where it was placed.
  - Any other instance goes to the host with the most uncommitted memory that fits it; ties go
    by inventory order, and each placement is counted before the next.
  - While a host of the group is unreachable (it has no facts), an instance found on no
    reachable host waits, declared C(host) or not, since the unreachable host may hold it.
  - A declared id that exists on another host than its C(host), or on two hosts, is an error.
  - An instance declared C(absent) with no C(host) that exists nowhere is not placed.
options:
  _input:
    description: The declared instances (dicts with C(id), optional C(host), C(state), C(settings), C(secrets)).
    type: list
    elements: dict
    required: true
  facts:
    description: Each host's C(fireclaw) fact (C(fireclaw.fleet.host_facts)), by host name; a host without facts is unreachable.
    type: dict
    required: true
  hosts:
    description: The group's hosts in inventory order.
    type: list
    elements: str
    required: true
  previous:
    description: An earlier run's decisions, id to host.
    type: dict
    default: {}
'''

EXAMPLES = r'''
- name: Place the group's instances
  ansible.builtin.set_fact:
    placed: "{{ fireclaw_instances | fireclaw.fleet.placement(facts, groups['fireclaw_hosts'], previous) }}"
'''

RETURN = r'''
_value:
  description:
    - C(by_host) maps each host to its instances; C(decisions) maps each id to its host and why;
      C(errors) lists what stops the play (a declared id on another host, a host not in the
      group, an instance no host fits); C(waiting) lists what is not placed because a host of
      the group is unreachable.
  type: dict
'''

from ansible.errors import AnsibleFilterError

DEFAULT_MEMORY_MIB = 8192


def memory_of(instance):
    settings = instance.get('settings') or {}
    return int(settings.get('vm_mem_mib', DEFAULT_MEMORY_MIB))


def placement(instances, facts, hosts, previous=None):
    """See DOCUMENTATION."""
    if not isinstance(instances, list):
        raise AnsibleFilterError('placement expects a list of instances')
    previous = previous or {}
    unreachable = [h for h in hosts if not facts.get(h)]
    existing = {}
    for host in hosts:
        for found in (facts.get(host) or {}).get('instances', []):
            existing.setdefault(found['id'], []).append(host)
    free = dict((h, int((facts.get(h) or {}).get('memory', {}).get('uncommitted_mib', 0))) for h in hosts)
    by_host = dict((h, []) for h in hosts)
    decisions = {}
    errors = []
    waiting = []
    pending = []
    declared_ids = set(i['id'] for i in instances)
    for ident, where in sorted(existing.items()):
        # Ids are per host: only a declared one on two hosts is a fleet's problem.
        if len(where) > 1 and ident in declared_ids:
            errors.append('%s exists on %s: one copy is stale (a move cut short?); destroy it where it '
                          'should not be, then run again' % (ident, ' and '.join(where)))

    def wait(ident):
        # It is on no host that answered; an unreachable one may hold it, and making it
        # elsewhere would run one agent twice.
        waiting.append('%s waits: it is on no reachable host, and %s cannot be asked whether it holds it'
                       % (ident, ', '.join(unreachable)))

    for instance in instances:
        ident = instance['id']
        wanted = instance.get('host')
        where = existing.get(ident, [])
        if len(where) > 1:
            continue
        there = where[0] if where else None
        if wanted is not None:
            if wanted not in by_host:
                errors.append('%s: its host %s is not in the group' % (ident, wanted))
            elif there is not None and there != wanted:
                errors.append('%s: declared on %s but it exists on %s; move it (move.yml) or declare it there'
                              % (ident, wanted, there))
            elif there is None and unreachable:
                wait(ident)
            else:
                decisions[ident] = dict(host=wanted, why='declared on this host')
            continue
        if there is not None:
            decisions[ident] = dict(host=there, why='it exists there')
        elif instance.get('state', 'running') == 'absent':
            continue
        elif unreachable:
            wait(ident)
        elif previous.get(ident) in by_host:
            decisions[ident] = dict(host=previous[ident], why='placed there by an earlier run')
        else:
            pending.append(instance)
    stopped = {}
    for host in hosts:
        for found in (facts.get(host) or {}).get('instances', []):
            if found.get('state') == 'stopped':
                stopped[found['id']] = int(found.get('memory_mib', 0))
    for ident, decision in decisions.items():
        host = decision['host']
        declared = [i for i in instances if i['id'] == ident][0]
        if ident in stopped and declared.get('state', 'running') in ('running', 'suspended'):
            # Stopped now, so not committed in the facts; started by this run, it will be.
            free[host] -= stopped[ident]
        if decision['why'] != 'it exists there':
            # Not on the host yet: it takes memory there.
            if not existing.get(ident) and declared.get('state', 'running') != 'absent':
                free[host] -= memory_of(declared)
    for instance in pending:
        need = memory_of(instance)
        candidates = [h for h in hosts if h not in unreachable and free[h] >= need]
        if not candidates:
            errors.append('%s: no host has %d MiB uncommitted' % (instance['id'], need))
            continue
        # Most free first; ties by inventory order (max keeps the first of equals).
        best = max(candidates, key=lambda h: (free[h], -hosts.index(h)))
        free[best] -= need
        decisions[instance['id']] = dict(host=best, why='most uncommitted memory (%d MiB left after it)' % free[best])
    for instance in instances:
        decision = decisions.get(instance['id'])
        if decision is not None:
            placed = dict(instance)
            placed.pop('host', None)
            by_host[decision['host']].append(placed)
    return dict(by_host=by_host, decisions=decisions, errors=errors, waiting=waiting)


def expired_backups(paths, keep):
    """The archives beyond the newest I(keep) of each instance, by their names
    (C(<id>-<UTC time>.fireclaw), which sort by time)."""
    import os
    import re
    by_id = {}
    for path in paths:
        match = re.match(r'^(.+)-\d{4}-\d{2}-\d{2}T\d{6}Z\.fireclaw$', os.path.basename(path))
        if match:
            by_id.setdefault(match.group(1), []).append(path)
    expired = []
    for group in by_id.values():
        group.sort(key=os.path.basename)
        expired.extend(group[:-int(keep)] if int(keep) > 0 else group)
    return sorted(expired)


class FilterModule(object):
    def filters(self):
        return dict(placement=placement, expired_backups=expired_backups)
