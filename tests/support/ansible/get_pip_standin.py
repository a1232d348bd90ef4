"""Stands in for pip's get-pip.py bootstrap script, which ansible-test downloads from a host
the tests cannot reach: pip from the Python's own ensurepip (Debian's python3-venv carries
its wheel), then the packages ansible-test asked for, from the package index."""
import ensurepip
import subprocess
import sys

ensurepip.bootstrap(upgrade=True)
packages = [arg for arg in sys.argv[1:] if not arg.startswith('-')]
options = [arg for arg in sys.argv[1:] if arg in ('--disable-pip-version-check', '--quiet')]
subprocess.check_call(
    [sys.executable, '-m', 'pip', 'install', '--disable-pip-version-check'] + options + packages
)
