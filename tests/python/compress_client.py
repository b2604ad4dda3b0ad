"""A MUPDATE client on Python's own ssl and zlib: optionally STARTTLS (verifying the server
against a CA file), then COMPRESS DEFLATE with raw deflate (wbits=-15, RFC 4978 framing),
login, a write and a FIND whose answers are checked. Exits 0 and prints "ok" on success.

Usage: compress_client.py HOST PORT [CA_FILE]   (with CA_FILE: STARTTLS first)
"""
import socket
import ssl
import sys
import zlib

host, port = sys.argv[1], int(sys.argv[2])
ca_file = sys.argv[3] if len(sys.argv) > 3 else None
sock = socket.create_connection((host, port), timeout=10)


def read_until(conn, needle, inflate=None):
    seen = b""
    while needle not in seen:
        chunk = conn.recv(65536)
        if not chunk:
            sys.exit(f"EOF before {needle!r}: {seen!r}")
        seen += inflate.decompress(chunk) if inflate else chunk
    return seen


banner_end = b'"(master)"\r\n'
banner = read_until(sock, banner_end)
conn = sock
if ca_file:
    assert b"* STARTTLS\r\n" in banner, banner
    conn.sendall(b"S1 STARTTLS\r\n")
    read_until(conn, b"S1 OK Begin TLS negotiation now\r\n")
    context = ssl.create_default_context(cafile=ca_file)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    conn = context.wrap_socket(sock, server_hostname=host)
    banner = read_until(conn, banner_end)
    assert b"* STARTTLS" not in banner, banner
assert b'* COMPRESS "DEFLATE"\r\n' in banner, banner

conn.sendall(b'C1 COMPRESS "deflate"\r\n')
read_until(conn, b"C1 OK deflate active\r\n")
deflate = zlib.compressobj(wbits=-15)
inflate = zlib.decompressobj(wbits=-15)


def send(data):
    conn.sendall(deflate.compress(data) + deflate.flush(zlib.Z_SYNC_FLUSH))


send(b'A0 AUTHENTICATE "PLAIN" "AG11cGRhdGUAbXVwZGF0ZXBhc3M="\r\n')
read_until(conn, b'A0 OK "Authenticated"\r\n', inflate)
name = b"user.zlib" + (b"tls" if ca_file else b"clear")
# A long ACL makes the answer span more than one deflate block.
acl = b"\t".join(b"user%d\tlrswipkxtecda" % i for i in range(200)) + b"\t"
send(b'A1 ACTIVATE "%s" "be1!p" {%d+}\r\n%s\r\n' % (name, len(acl), acl))
read_until(conn, b'A1 OK "done"\r\n', inflate)
send(b'F1 FIND "%s"\r\n' % name)
found = read_until(conn, b'F1 OK "Search completed"\r\n', inflate)
assert b"F1 MAILBOX {%d+}\r\n%s" % (len(name), name) in found, found
assert acl in found, "the ACL came back intact"
send(b'C2 COMPRESS "DEFLATE"\r\n')
read_until(conn, b"C2 BAD DEFLATE active via COMPRESS\r\n", inflate)
send(b"L1 LOGOUT\r\n")
read_until(conn, b'L1 OK "bye-bye"\r\n', inflate)
print("ok")
