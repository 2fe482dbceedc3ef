#!/usr/bin/env python3
# 100 unauthenticated connections, each sending 1 MiB minus one byte of a body and holding it:
# what a server buffers before it authenticates. Usage: bench/unauth_bodies.py PORT; read the
# server's VmHWM in /proc/<pid>/status before and after (docs/security.md).
import socket, sys, threading, time
host, port, n = "127.0.0.1", int(sys.argv[1]), 100
body = b"x" * (1 << 20)
socks = []
def one():
    s = socket.create_connection((host, port))
    s.sendall(b"POST /v1/accounts HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body))
    try:
        s.settimeout(5); s.sendall(body[:-1])  # all but the last byte: the server holds what it buffered
    except Exception:
        pass
    socks.append(s)
ts = [threading.Thread(target=one) for _ in range(n)]
[t.start() for t in ts]; [t.join() for t in ts]
time.sleep(2)
