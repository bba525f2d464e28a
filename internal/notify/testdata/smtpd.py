"""The SMTP server of the notify tests: aiosmtpd (Debian's python3-aiosmtpd)
on loopback, three listeners:

  STARTTLS_PORT  STARTTLS required, then AUTH (USER, PASSWORD) required
  SMTPS_PORT     TLS from the first byte, AUTH required
  PLAIN_PORT     no TLS, no AUTH

Each mail it takes is written to OUTDIR/PORT/N.eml (the message as received)
and OUTDIR/PORT/N.json (the envelope: sender, recipients, login). It prints
"ready" once every listener is up, and stops when its standard input closes
(the test process ended).

usage: smtpd.py OUTDIR CERT KEY USER PASSWORD STARTTLS_PORT SMTPS_PORT PLAIN_PORT
"""
import json
import os
import ssl
import sys
import threading

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

outdir, cert, key, user, password = sys.argv[1:6]
starttls_port, smtps_port, plain_port = (int(p) for p in sys.argv[6:9])

lock = threading.Lock()
count = {"n": 0}


class Keep:
    def __init__(self, port):
        self.dir = os.path.join(outdir, str(port))
        os.makedirs(self.dir, exist_ok=True)

    async def handle_DATA(self, server, session, envelope):
        with lock:
            count["n"] += 1
            n = count["n"]
        base = os.path.join(self.dir, str(n))
        login = session.auth_data.login.decode() if isinstance(session.auth_data, LoginPassword) else None
        with open(base + ".json.tmp", "w") as f:
            json.dump({"from": envelope.mail_from, "to": envelope.rcpt_tos, "login": login}, f)
        with open(base + ".eml.tmp", "wb") as f:
            f.write(envelope.original_content)
        os.rename(base + ".json.tmp", base + ".json")
        os.rename(base + ".eml.tmp", base + ".eml")
        return "250 OK"


def authenticate(server, session, envelope, mechanism, auth_data):
    ok = isinstance(auth_data, LoginPassword) and auth_data.login == user.encode() and auth_data.password == password.encode()
    return AuthResult(success=ok, handled=False, auth_data=auth_data)


ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
ctx.load_cert_chain(cert, key)

servers = [
    Controller(Keep(starttls_port), hostname="127.0.0.1", port=starttls_port, tls_context=ctx, require_starttls=True,
               auth_required=True, authenticator=authenticate),
    Controller(Keep(smtps_port), hostname="127.0.0.1", port=smtps_port, ssl_context=ctx,
               auth_required=True, auth_require_tls=False, authenticator=authenticate),
    Controller(Keep(plain_port), hostname="127.0.0.1", port=plain_port),
]
for s in servers:
    s.start()
print("ready", flush=True)
sys.stdin.read()
for s in servers:
    s.stop()
