#!/usr/bin/env python3
"""A plain TCP forwarder for tests: listen on 127.0.0.1:<port> (0 = any), forward to <target>.

Prints "LISTENING <port>" once ready. Freezing it with SIGSTOP makes every connection through it
half-open (no FIN, no RST), which is how the half-open gateway lock-out is reproduced.
"""
import socket
import sys
import threading


def pipe(src, dst):
    try:
        while True:
            data = src.recv(65536)
            if not data:
                break
            dst.sendall(data)
    except OSError:
        pass
    finally:
        try:
            dst.shutdown(socket.SHUT_WR)
        except OSError:
            pass


def main():
    port = int(sys.argv[1])
    host, tport = sys.argv[2].rsplit(":", 1)
    lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    lsock.bind(("127.0.0.1", port))
    lsock.listen(64)
    print("LISTENING %d" % lsock.getsockname()[1], flush=True)
    while True:
        c, _ = lsock.accept()
        u = socket.create_connection((host, int(tport)))
        for s in (c, u):
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        threading.Thread(target=pipe, args=(c, u), daemon=True).start()
        threading.Thread(target=pipe, args=(u, c), daemon=True).start()


if __name__ == "__main__":
    main()
