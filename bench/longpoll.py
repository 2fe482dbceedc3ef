#!/usr/bin/env python3
"""Holds N long-polls (GET /v1/jobs/{id} with Prefer: wait=30) open at once.

Each job must stay queued for the whole hold (the bench inserts accepted
command records with no event behind them). Opens one TCP connection per
job, sends the request, and keeps the connection until --hold seconds have
passed, then prints one line:

  BENCHJSON {"held": ..., "answered_early": ..., "connect_errors": ...}

`held` counts requests that were still unanswered when the hold ended (the
figure that matters: the server held them all); `answered_early` counts
answers that came back during the hold (a long-poll that did not wait).
Standard library only; loopback only; stops by itself.
"""
import argparse
import resource
import asyncio
import json
import sys
import urllib.parse


async def one(host, port, path, key, hold_s, stats, ready):
    try:
        reader, writer = await asyncio.open_connection(host, port)
    except OSError:
        stats["connect_errors"] += 1
        ready.release()
        return
    req = (
        f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nAuthorization: Bearer {key}\r\n"
        "Prefer: wait=30\r\nConnection: close\r\n\r\n"
    )
    writer.write(req.encode())
    await writer.drain()
    ready.release()
    try:
        await asyncio.wait_for(reader.read(1), timeout=hold_s)
        stats["answered_early"] += 1
    except asyncio.TimeoutError:
        stats["held"] += 1
    writer.close()


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", required=True, help="query API base URL (http://127.0.0.1:PORT)")
    ap.add_argument("--key", required=True)
    ap.add_argument("--jobs", required=True, help="file of job ids, one per line, that stay queued")
    ap.add_argument("--hold", type=float, default=20.0, help="seconds to hold the polls")
    ap.add_argument("--ready-file", help="written once every request is sent")
    a = ap.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 4096:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(4096, hard), hard))
    u = urllib.parse.urlparse(a.url)
    ids = [line.strip() for line in open(a.jobs) if len(line.strip()) == 36]
    stats = {"held": 0, "answered_early": 0, "connect_errors": 0, "polls": len(ids)}
    ready = asyncio.Semaphore(0)
    tasks = [
        asyncio.create_task(one(u.hostname, u.port, f"/v1/jobs/{i}", a.key, a.hold, stats, ready)) for i in ids
    ]
    for _ in ids:
        await ready.acquire()
    if a.ready_file:
        with open(a.ready_file, "w") as f:
            f.write("ready\n")
    await asyncio.gather(*tasks)
    print("BENCHJSON " + json.dumps(stats))
    sys.stdout.flush()


if __name__ == "__main__":
    asyncio.run(main())
