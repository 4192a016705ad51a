"""Small network helpers shared by the bench's parts (run.py) and its
peers (peers.py): a free port on an address, and the wait for a 220."""
import socket
import time


def free_port(addr):
    s = socket.socket()
    s.bind((addr, 0))
    port = s.getsockname()[1]
    s.close()
    return port


def wait_greeting(addr, port, timeout, proc=None):
    """Seconds until a connection to addr:port got a 220 line, or None."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if proc is not None and proc.poll() is not None:
            return None
        try:
            with socket.create_connection((addr, port), timeout=2) as s:
                s.settimeout(10)
                g = s.recv(512)
                if g.startswith(b"220"):
                    dt = time.monotonic() - t0
                    s.sendall(b"QUIT\r\n")
                    return dt
        except OSError:
            pass
        time.sleep(0.001)
    return None
