#!/usr/bin/env python3
"""Reads in time and reads of one's own writes against a running stack.

  bench/reads.py <env file> [entries] [as_of reads] [rate/s] [seconds]

1. as_of: one account with `entries` (10,000) deposits (through /v1/batch),
   then `as_of reads` (500) sequential GET /v1/accounts/{id}?as_of=<random
   instant of its history> on one keep-alive connection to the gateway:
   p50, p99, and the same for the plain GET of the account (its ceiling here:
   the same path without the history).
2. Token reads: deposits open-loop at `rate`/s (500) for `seconds` (10) over
   20 accounts, each 202 followed at once by GET /v1/accounts/{id} with its
   Tally-Consistency-Token (Prefer: wait=10); how long that GET took (the
   wait for the projector included): p50, p99, and how many said "reached".

Loopback only; bounded by its arguments; stops by itself.
"""
import http.client, json, random, sys, threading, time, uuid

from tally_bench import ctl, env_of

E = env_of(sys.argv[1])
ENTRIES = int(sys.argv[2]) if len(sys.argv) > 2 else 10000
READS = int(sys.argv[3]) if len(sys.argv) > 3 else 500
RATE = float(sys.argv[4]) if len(sys.argv) > 4 else 500
SECS = float(sys.argv[5]) if len(sys.argv) > 5 else 10
HOST, PORT = E['TALLY_URL'].split('//')[1].split(':')


tenant = ctl(E, 'tenants', 'create', '--name', 'bench-reads-' + uuid.uuid4().hex[:8])
KEY = ctl(E, 'keys', 'create', '--tenant', tenant, '--scopes', 'read,write', '--rate', '1000000', '--burst', '1000000')
time.sleep(1.5)
H = {'Authorization': 'Bearer ' + KEY, 'Content-Type': 'application/json'}


def request(conn, method, path, body=None, headers=None):
    h = dict(H)
    h.update(headers or {})
    conn.request(method, path, body=json.dumps(body) if body is not None else None, headers=h)
    r = conn.getresponse()
    data = r.read()
    return r.status, dict((k.lower(), v) for k, v in r.getheaders()), json.loads(data) if data else None


def wait_job(conn, url):
    st, _, b = request(conn, 'GET', url, headers={'Prefer': 'wait=30'})
    return b


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(len(xs) * p))]


c = http.client.HTTPConnection(HOST, int(PORT))
_, _, b = request(c, 'POST', '/v1/accounts', {'currency': 'EUR', 'label': 'bench as_of'})
acc = b['job']['resource']['id']
wait_job(c, b['job']['url'])

# 1. an account with ENTRIES entries, then as_of reads at random instants of its history
for start in range(0, ENTRIES, 100):
    items = [{'path': '/v1/accounts/%s/deposits' % acc, 'body': {'amount': 1, 'currency': 'EUR'},
              'idempotency_key': str(uuid.uuid4())} for _ in range(min(100, ENTRIES - start))]
    st, _, b = request(c, 'POST', '/v1/batch', {'requests': items})
    assert st == 200, (st, b)

deadline = time.time() + 300
while time.time() < deadline:
    _, _, a = request(c, 'GET', '/v1/accounts/%s' % acc)
    if a['balance'] == ENTRIES:
        break
    time.sleep(0.5)
assert a['balance'] == ENTRIES, a
_, _, page = request(c, 'GET', '/v1/accounts/%s/entries?limit=1' % acc)
t_first = page['data'][0]['created_at']
t_last = a['updated_at']


def to_us(t):
    from datetime import datetime
    return int(datetime.fromisoformat(t.replace('Z', '+00:00')).timestamp() * 1e6)


def from_us(us):
    from datetime import datetime, timezone
    return datetime.fromtimestamp(us / 1e6, tz=timezone.utc).strftime('%Y-%m-%dT%H:%M:%S.%fZ')


lo, hi = to_us(t_first), to_us(t_last)
as_of_ms, plain_ms = [], []
for _ in range(READS):
    t = from_us(random.randint(lo, hi))
    t0 = time.perf_counter()
    st, _, _ = request(c, 'GET', '/v1/accounts/%s?as_of=%s' % (acc, t))
    as_of_ms.append((time.perf_counter() - t0) * 1000)
    assert st == 200, st
    t0 = time.perf_counter()
    st, _, _ = request(c, 'GET', '/v1/accounts/%s' % acc)
    plain_ms.append((time.perf_counter() - t0) * 1000)
print('as_of on %d entries, %d reads: p50 %.2f ms, p99 %.2f ms; plain GET p50 %.2f ms, p99 %.2f ms; ratio p50 %.1fx' %
      (ENTRIES, READS, pct(as_of_ms, .5), pct(as_of_ms, .99), pct(plain_ms, .5), pct(plain_ms, .99),
       pct(as_of_ms, .5) / pct(plain_ms, .5)))

# 2. token reads right after their 202, open-loop at RATE/s
accounts = []
for i in range(20):
    _, _, b = request(c, 'POST', '/v1/accounts', {'currency': 'EUR', 'label': 'bench token %d' % i})
    accounts.append(b['job']['resource']['id'])
    wait_job(c, b['job']['url'])
waits, reached, lock = [], [0], threading.Lock()
n = int(RATE * SECS)
start = time.time() + 0.2


def sender(k, workers):
    conn = http.client.HTTPConnection(HOST, int(PORT))
    for i in range(k, n, workers):
        delay = start + i / RATE - time.time()
        if delay > 0:
            time.sleep(delay)
        a = accounts[i % len(accounts)]
        st, h, b = request(conn, 'POST', '/v1/accounts/%s/deposits' % a, {'amount': 1, 'currency': 'EUR'},
                           {'Idempotency-Key': str(uuid.uuid4())})
        if st != 202:
            continue
        t0 = time.perf_counter()
        st, h2, _ = request(conn, 'GET', '/v1/accounts/%s' % a,
                            headers={'Tally-Consistency-Token': h['tally-consistency-token'], 'Prefer': 'wait=10'})
        ms = (time.perf_counter() - t0) * 1000
        with lock:
            waits.append(ms)
            reached[0] += h2.get('tally-consistency') == 'reached'


workers = 32
ts = [threading.Thread(target=sender, args=(k, workers)) for k in range(workers)]
t0 = time.time()
for t in ts:
    t.start()
for t in ts:
    t.join()
elapsed = time.time() - t0
print('token reads at %.0f/s target (%.0f/s sent), %d reads: wait p50 %.1f ms, p99 %.1f ms, max %.1f ms; reached %d/%d' %
      (RATE, len(waits) / elapsed, len(waits), pct(waits, .5), pct(waits, .99), max(waits), reached[0], len(waits)))
