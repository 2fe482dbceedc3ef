"""What the Python benches share: the stack's env file and tallyctl."""
import os, subprocess


def env_of(path):
    """The KEY=VALUE lines of an env file (tests/stack.sh writes one)."""
    out = {}
    for line in open(path):
        k, _, v = line.rstrip('\n').partition('=')
        out[k] = v.strip("'")
    return out


def ctl(env, *args):
    """Runs tallyctl of the stack `env` with `args`; its standard output."""
    return subprocess.run([env['TALLY_BIN'] + '/tallyctl', *args], capture_output=True, text=True, check=True,
                          env={**os.environ, 'TALLY_PG_DSN': env['TALLY_PG_DSN']}).stdout.strip()
