"""A TCP relay between a client and a broker, to cut links on demand."""
import socket
import threading


class Relay:
    """Listens on a free loopback port and relays each link to target_port.
    cut() drops every link; while hold is set new links are refused."""

    def __init__(self, target_port):
        self.target = target_port
        self.hold = False
        self.links = []
        self.lock = threading.Lock()
        self.lsock = socket.socket()
        self.lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.lsock.bind(('127.0.0.1', 0))
        self.lsock.listen(16)
        self.port = self.lsock.getsockname()[1]
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self):
        while True:
            try:
                a, _ = self.lsock.accept()
            except OSError:
                return  # closed
            if self.hold:
                a.close()
                continue
            try:
                b = socket.create_connection(('127.0.0.1', self.target))
            except OSError:
                a.close()
                continue
            with self.lock:
                self.links.append((a, b))
            for src, dst in ((a, b), (b, a)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    @staticmethod
    def _pump(src, dst):
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def cut(self):
        with self.lock:
            links, self.links = self.links, []
        for a, b in links:
            for s in (a, b):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                s.close()

    def close(self):
        self.lsock.close()
        self.cut()
