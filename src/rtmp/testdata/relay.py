#!/usr/bin/env python3
"""Tiny TCP relay: listen on LPORT, forward to 127.0.0.1:UPORT, record the
client->server bytes of each connection to PREFIX-<n>.bin. Exits after
MAXCONN connections have closed."""
import socket, sys, threading

lport, uport, prefix, maxconn = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], int(sys.argv[4])

def pump(src, dst, rec):
    try:
        while True:
            b = src.recv(65536)
            if not b:
                break
            if rec is not None:
                rec.write(b)
                rec.flush()
            dst.sendall(b)
    except OSError:
        pass
    finally:
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

srv = socket.socket()
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("127.0.0.1", lport))
srv.listen(4)
threads = []
for n in range(maxconn):
    c, _ = srv.accept()
    u = socket.create_connection(("127.0.0.1", uport))
    rec = open(f"{prefix}-{n}.bin", "wb")
    t1 = threading.Thread(target=pump, args=(c, u, rec))
    t2 = threading.Thread(target=pump, args=(u, c, None))
    t1.start(); t2.start()
    threads += [t1, t2]
for t in threads:
    t.join()
