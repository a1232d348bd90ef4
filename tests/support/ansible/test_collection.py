"""Unit tests of the fireclaw.fleet collection's Python: the placement filter and the apply
file the instances module writes. Run by tests/ansible.rs with the collection on sys.path."""
import os
import sys
import unittest

sys.path.insert(0, os.environ['FIRECLAW_COLLECTION'])

from plugins.filter.placement import expired_backups, placement  # noqa: E402
from plugins.modules.instances import render  # noqa: E402


def facts(uncommitted, ids=()):
    return {'memory': {'uncommitted_mib': uncommitted}, 'instances': [{'id': i} for i in ids]}


def bot(ident, mib=1024, host=None, state='running'):
    declared = {'id': ident, 'state': state, 'settings': {'vm_mem_mib': mib}}
    if host:
        declared['host'] = host
    return declared


class Placement(unittest.TestCase):
    hosts = ['h1', 'h2', 'h3']

    def test_most_free_memory_that_fits_with_facts_updated_after_each(self):
        placed = placement([bot('a', 3000), bot('b', 3000), bot('c', 3000)],
                           {'h1': facts(4000), 'h2': facts(7000), 'h3': facts(1000)}, self.hosts)
        self.assertEqual(placed['errors'], [])
        hosts = dict((i, d['host']) for i, d in placed['decisions'].items())
        # h2 (7000) takes a, then has 4000 like h1: the tie goes to h1 by inventory order.
        self.assertEqual(hosts, {'a': 'h2', 'b': 'h1', 'c': 'h2'})

    def test_declared_existing_and_earlier_placements_stay(self):
        placed = placement([bot('x', host='h3'), bot('y'), bot('z')],
                           {'h1': facts(100000), 'h2': facts(1, ids=['y']), 'h3': facts(0)},
                           self.hosts, previous={'z': 'h3'})
        hosts = dict((i, d['host']) for i, d in placed['decisions'].items())
        self.assertEqual(hosts, {'x': 'h3', 'y': 'h2', 'z': 'h3'})
        self.assertEqual([i['id'] for i in placed['by_host']['h3']], ['x', 'z'])
        self.assertNotIn('host', placed['by_host']['h3'][0])

    def test_a_declared_id_on_another_host_is_an_error(self):
        placed = placement([bot('x', host='h1')], {'h1': facts(9), 'h2': facts(9, ids=['x']), 'h3': facts(9)},
                           self.hosts)
        self.assertEqual(len(placed['errors']), 1)
        self.assertIn('exists on h2', placed['errors'][0])

    def test_nothing_is_placed_or_made_while_a_host_is_unreachable(self):
        placed = placement([bot('new'), bot('kept', host='h1'), bot('declared', host='h1'), bot('before')],
                           {'h1': facts(9000, ids=['kept']), 'h2': {}, 'h3': facts(9000)},
                           self.hosts, previous={'before': 'h3'})
        # Only what a reachable host holds goes on; the rest may be on h2.
        self.assertEqual(list(placed['decisions']), ['kept'])
        self.assertEqual([w.split()[0] for w in placed['waiting']], ['new', 'declared', 'before'])
        self.assertIn('h2 cannot be asked', placed['waiting'][0])

    def test_an_id_on_two_hosts_is_an_error_and_is_not_placed(self):
        placed = placement([bot('twice'), bot('once')],
                           {'h1': facts(9, ids=['twice']), 'h2': facts(9), 'h3': facts(9, ids=['twice', 'once'])},
                           self.hosts)
        self.assertEqual(len(placed['errors']), 1)
        self.assertIn('twice exists on h1 and h3', placed['errors'][0])
        self.assertEqual(list(placed['decisions']), ['once'])
        # An id no one declared may be on two hosts: ids are per host.
        placed = placement([bot('once')],
                           {'h1': facts(9, ids=['twice']), 'h2': facts(9), 'h3': facts(9, ids=['twice', 'once'])},
                           self.hosts)
        self.assertEqual(placed['errors'], [])

    def test_a_stopped_instance_declared_running_counts_against_its_host(self):
        stopped = {'memory': {'uncommitted_mib': 6000},
                   'instances': [{'id': 'sleeper', 'state': 'stopped', 'memory_mib': 4000}]}
        placed = placement([bot('sleeper'), bot('new', 3000)], {'h1': stopped, 'h2': facts(5000), 'h3': facts(1000)},
                           self.hosts)
        # h1 looks freer (6000), but starting sleeper leaves it 2000: new goes to h2.
        self.assertEqual(placed['decisions']['new']['host'], 'h2')
        placed = placement([bot('sleeper', state='stopped'), bot('new', 3000)],
                           {'h1': stopped, 'h2': facts(5000), 'h3': facts(1000)}, self.hosts)
        self.assertEqual(placed['decisions']['new']['host'], 'h1')

    def test_an_absent_instance_that_exists_nowhere_is_not_placed(self):
        placed = placement([bot('gone', 50000, state='absent')], {'h1': facts(1), 'h2': facts(1), 'h3': facts(1)},
                           self.hosts)
        self.assertEqual(placed['errors'], [])
        self.assertEqual(placed['decisions'], {})
        placed = placement([bot('gone', state='absent')], {'h1': facts(1), 'h2': {}, 'h3': facts(1)}, self.hosts)
        self.assertEqual(placed['waiting'], [])

    def test_no_host_that_fits_is_an_error(self):
        placed = placement([bot('big', 50000)], {'h1': facts(1000), 'h2': facts(1000), 'h3': facts(1000)},
                           self.hosts)
        self.assertIn('no host has 50000 MiB', placed['errors'][0])


class Backups(unittest.TestCase):
    def test_all_but_the_newest_of_each_instance(self):
        paths = ['/b/h1/a-2026-12-0%dT030000Z.fireclaw' % day for day in (1, 2, 3)]
        paths += ['/b/h2/ab-2026-12-01T030000Z.fireclaw', '/b/h2/notes.txt']
        self.assertEqual(expired_backups(paths, 2), ['/b/h1/a-2026-12-01T030000Z.fireclaw'])


class ApplyFile(unittest.TestCase):
    def test_secrets_are_references_and_settings_are_toml(self):
        text, environment = render([
            {'id': 'a', 'state': 'running', 'settings': {'skills': ['github'], 'vm_mem_mib': 2048,
                                                          'skip_browser_install': True},
             'secrets': {'openai_api_key': 'sk-vault-secret', 'telegram_token': None}},
            {'id': 'b', 'state': 'absent', 'settings': {}, 'secrets': {}},
        ])
        self.assertNotIn('sk-vault-secret', text)
        self.assertEqual(environment, {'FIRECLAW_SECRET_0_OPENAI_API_KEY': 'sk-vault-secret'})
        self.assertIn('openai_api_key = { env = "FIRECLAW_SECRET_0_OPENAI_API_KEY" }', text)
        self.assertIn('skills = ["github"]', text)
        self.assertIn('skip_browser_install = true', text)
        self.assertIn('[instances."b"]\nstate = "absent"', text)

    def test_a_secret_among_the_settings_is_refused(self):
        with self.assertRaises(ValueError):
            render([{'id': 'a', 'state': 'running', 'settings': {'openai_api_key': 'x'}, 'secrets': {}}])


if __name__ == '__main__':
    unittest.main()
