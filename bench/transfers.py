#!/usr/bin/env python3
"""Transfer saga figures against a running stack (tests/stack.sh or up.sh).

  bench/transfers.py <env file> [rate/s] [seconds] [backlog]

1. Backlog: posts `backlog` transfers among 20 funded accounts as fast as
   /v1/batch takes them, then waits until every job is terminal: transfers
   finished per second, from the first 202 to the last terminal job.
2. Steady rate: posts transfers open-loop at `rate`/s for `seconds` (sends are
   scheduled, never waiting for answers), then reads from PostgreSQL the time
   from each command's record (written just before its 202) to its job's
   terminal event (jobs.updated_at is the event's occurred_at): p50, p99, max.

Loopback only; bounded by its arguments; stops by itself.
"""
import http.client, json, os, random, subprocess, sys, threading, time, uuid

from tally_bench import env_of

E = env_of(sys.argv[1])
RATE = float(sys.argv[2]) if len(sys.argv) > 2 else 200
SECS = float(sys.argv[3]) if len(sys.argv) > 3 else 20
BACKLOG = int(sys.argv[4]) if len(sys.argv) > 4 else 2000
HOST, PORT = E['TALLY_COMMAND_URL'].split('//')[1].split(':')
DSN = E['TALLY_PG_DSN']

def ctl(*args):
    return subprocess.run([E['TALLY_BIN'] + '/tallyctl', *args], capture_output=True, text=True, check=True,
                          env={**os.environ, 'TALLY_PG_DSN': DSN}).stdout.strip()

def sql(q):
    # on standard input: the id lists are longer than a command line may be
    return subprocess.run(['psql', DSN, '-qAt', '-f', '-'], input=q, capture_output=True, text=True,
                          check=True).stdout.strip()

tenant = ctl('tenants', 'create', '--name', 'bench-transfers-' + uuid.uuid4().hex[:8])
KEY = ctl('keys', 'create', '--tenant', tenant, '--scopes', 'read,write', '--rate', '1000000', '--burst', '1000000')
time.sleep(1.5)
H = {'Authorization': 'Bearer ' + KEY, 'Content-Type': 'application/json'}

def post(conn, path, body, key=None):
    h = dict(H)
    if key:
        h['Idempotency-Key'] = key
    conn.request('POST', path, body=json.dumps(body), headers=h)
    r = conn.getresponse()
    return r.status, json.loads(r.read() or b'null')

def wait_terminal(job_ids, timeout):
    ids = ','.join("'%s'" % j for j in job_ids)
    deadline = time.time() + timeout
    while time.time() < deadline:
        if int(sql("SELECT count(*) FROM jobs WHERE id IN (%s) AND status IN ('succeeded','failed')" % ids)) == len(job_ids):
            return True
        time.sleep(0.2)
    return False

c = http.client.HTTPConnection(HOST, int(PORT))
accounts = []
for i in range(20):
    _, b = post(c, '/v1/accounts', {'currency': 'EUR', 'label': 'bench %d' % i})
    accounts.append(b['job']['resource']['id'])
time.sleep(1)
for a in accounts:
    post(c, '/v1/accounts/%s/deposits' % a, {'amount': 10**9, 'currency': 'EUR'}, str(uuid.uuid4()))
time.sleep(2)

def transfer_body():
    a, b = random.sample(accounts, 2)
    return {'from_account': a, 'to_account': b, 'amount': random.randint(1, 1000), 'currency': 'EUR'}

# 1. backlog through /v1/batch
jobs, t0 = [], time.time()
for start in range(0, BACKLOG, 100):
    items = [{'path': '/v1/transfers', 'body': transfer_body(), 'idempotency_key': str(uuid.uuid4())}
             for _ in range(min(100, BACKLOG - start))]
    _, b = post(c, '/v1/batch', {'requests': items})
    jobs += [r['job']['id'] for r in b['results'] if r['status'] == 202]
sent = time.time() - t0
ok = wait_terminal(jobs, 600)
took = time.time() - t0
print('backlog: %d transfers accepted in %.1f s, all terminal: %s, after %.1f s: %.0f transfers/s'
      % (len(jobs), sent, ok, took, len(jobs) / took))

# 2. steady open-loop rate
steady, lock, errors = [], threading.Lock(), [0]
def sender(offset, step):
    conn = http.client.HTTPConnection(HOST, int(PORT))
    n, start = offset, time.time()
    while n * (1.0 / RATE) < SECS:
        due = start + n / RATE
        delay = due - time.time()
        if delay > 0:
            time.sleep(delay)
        s, b = post(conn, '/v1/transfers', transfer_body(), str(uuid.uuid4()))
        with lock:
            if s == 202:
                steady.append(b['job']['id'])
            else:
                errors[0] += 1
        n += step
threads = [threading.Thread(target=sender, args=(i, 16)) for i in range(16)]
[t.start() for t in threads]
[t.join() for t in threads]
ok = wait_terminal(steady, 600)
ids = ','.join("'%s'" % j for j in steady)
p = sql("SELECT round(percentile_cont(0.5) WITHIN GROUP (ORDER BY d)::numeric, 1), "
        "round(percentile_cont(0.99) WITHIN GROUP (ORDER BY d)::numeric, 1), round(max(d)::numeric, 1) FROM ("
        "SELECT extract(epoch FROM j.updated_at - c.created_at) * 1000 AS d FROM jobs j "
        "JOIN command_requests c ON c.job_id = j.id WHERE j.id IN (%s)) x" % ids)
p50, p99, mx = p.split('|')
outcomes = sql("SELECT string_agg(status || ' ' || n, ', ') FROM (SELECT status, count(*) n FROM jobs WHERE id IN (%s) "
               "GROUP BY status) x" % ids)
print('steady: %d transfers at %.0f/s for %.0f s (%d not accepted), all terminal: %s; '
      'record -> terminal p50 %s ms, p99 %s ms, max %s ms (%s)' % (len(steady), RATE, SECS, errors[0], ok, p50, p99, mx, outcomes))
