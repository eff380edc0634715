"""A raw SMTP client for tests that must control every byte (pipelining, bare LF, smuggling)."""
import socket


class RawSMTP:
    def __init__(self, port, host="127.0.0.1", source=None, timeout=10):
        self.sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
        self.sock.settimeout(timeout)
        if source:
            self.sock.bind((source, 0))
        self.sock.connect((host, port))
        self.buffer = b""

    def send(self, data):
        self.sock.sendall(data if isinstance(data, bytes) else data.encode())

    def reply(self):
        """Reads one whole (possibly multi-line) reply; returns (code, [lines])."""
        lines = []
        while True:
            while b"\r\n" not in self.buffer:
                chunk = self.sock.recv(65536)
                if not chunk:
                    raise ConnectionError(f"closed after {lines!r} / {self.buffer!r}")
                self.buffer += chunk
            line, self.buffer = self.buffer.split(b"\r\n", 1)
            text = line.decode("utf-8", "replace")
            lines.append(text[4:])
            if text[3:4] == " ":
                return int(text[:3]), lines

    def code(self, expected_prefix=None):
        code, lines = self.reply()
        return f"{code} {lines[-1]}"

    def command(self, line):
        self.send(line + "\r\n")
        return self.code()

    def closed(self, wait=3):
        """True when the server closed the connection (EOF) within `wait` seconds."""
        self.sock.settimeout(wait)
        try:
            return self.sock.recv(1) == b"" and self.buffer == b""
        except (ConnectionResetError, BrokenPipeError):
            return True
        except socket.timeout:
            return False

    def close(self):
        self.sock.close()
