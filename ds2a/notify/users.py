"""Named users and their roles for the station's line interfaces (`ds2a inspect --opcua-users FILE`).

A users file is plain text, one user a line, `NAME:ROLE:HASH` (blank lines and `#` comments allowed):

    anna:operator:scrypt$16384$8$1$<salt, base64>$<key, base64>
    ben:engineer:pbkdf2_sha256$600000$<salt, base64>$<key, base64>

Secrets are never stored, only salted hashes (hashlib.scrypt, or PBKDF2-HMAC-SHA256 where the
Python's OpenSSL has no scrypt). `python -m ds2a.notify.users NAME ROLE` asks for a password and
prints the line to add. A user who logs in to OPC UA with a client certificate instead has
`x509_sha256$<SHA-256 of the certificate's DER bytes, hex>` in place of the hash
(`python -m ds2a.notify.users NAME ROLE --certificate FILE` prints it); the OPC UA server accepts that
certificate only with proof that the client holds its private key (a signed user token).
Roles, each with the rights of the ones before (docs/OPCUA.md):
`operator` (view, acknowledge alarms), `engineer` (also select recipes), `admin` (everything).
"""
from __future__ import annotations

import base64
import binascii
import collections
import getpass
import hashlib
import hmac
import os
import re
import sys
from dataclasses import dataclass
from typing import Deque, Dict, List, Optional

from ..errors import UserError

ROLES = ("operator", "engineer", "admin")  # in rising order of rights
# what each action needs at least (the OPC UA methods check these: ds2a/notify/opcua_server.py)
NEEDS = {"view": "operator", "acknowledge": "operator", "select_recipe": "engineer"}
SCRYPT = (2 ** 14, 8, 1)  # n, r, p: about 16 MiB and tens of ms per check, once per session
PBKDF2_ITERATIONS = 600_000
NAME_RE = re.compile(r"^[A-Za-z0-9._@-]{1,64}$")


@dataclass(frozen=True)
class User:
    name: str
    role: str
    secret: str  # the stored hash, never the password


def may(role: str, action: str) -> bool:
    """Whether `role` may do `action` (view, acknowledge, select_recipe)."""
    return role in ROLES and ROLES.index(role) >= ROLES.index(NEEDS[action])


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def hash_password(password: str, method: str = "scrypt", salt: Optional[bytes] = None) -> str:
    """The stored form of `password` with a fresh random salt (scrypt unless this Python lacks it)."""
    salt = os.urandom(16) if salt is None else salt
    if method == "scrypt" and hasattr(hashlib, "scrypt"):
        n, r, p = SCRYPT
        key = hashlib.scrypt(password.encode("utf-8"), salt=salt, n=n, r=r, p=p, maxmem=64 * 1024 * 1024, dklen=32)
        return f"scrypt${n}${r}${p}${_b64(salt)}${_b64(key)}"
    key = hashlib.pbkdf2_hmac("sha256", password.encode("utf-8"), salt, PBKDF2_ITERATIONS)
    return f"pbkdf2_sha256${PBKDF2_ITERATIONS}${_b64(salt)}${_b64(key)}"


CERT_PREFIX = "x509_sha256$"  # a certificate user's secret: the certificate's SHA-256 fingerprint


def certificate_fingerprint(der: bytes) -> str:
    """The users-file form of a client certificate (its DER bytes)."""
    return CERT_PREFIX + hashlib.sha256(bytes(der)).hexdigest()


def _check_hash(secret: str) -> str:
    """'' when `secret` is a hash this module can verify (or a certificate fingerprint), else what is wrong."""
    if secret.startswith(CERT_PREFIX):
        return "" if re.fullmatch(r"[0-9a-f]{64}", secret[len(CERT_PREFIX):]) else \
            "x509_sha256$ needs the certificate's SHA-256 as 64 lowercase hex digits"
    parts = secret.split("$")
    try:
        if parts[0] == "scrypt" and len(parts) == 6:
            n, r, p = (int(v) for v in parts[1:4])
            if n < 2 or n & (n - 1) or r < 1 or p < 1 or 128 * r * n * p > 1 << 30:
                return "scrypt parameters n (a power of two), r, p are out of range"
            if not hasattr(hashlib, "scrypt"):
                return "this Python's hashlib has no scrypt: use pbkdf2_sha256 hashes"
        elif parts[0] == "pbkdf2_sha256" and len(parts) == 4:
            if int(parts[1]) < 100_000:
                return "pbkdf2_sha256 needs at least 100000 iterations"
        else:
            return "not scrypt$N$R$P$SALT$KEY or pbkdf2_sha256$ITERATIONS$SALT$KEY"
        salt, key = base64.b64decode(parts[-2], validate=True), base64.b64decode(parts[-1], validate=True)
    except (ValueError, binascii.Error):
        return "a number or base64 field is malformed"
    if len(salt) < 8 or len(key) < 16:
        return "the salt (at least 8 bytes) or key (at least 16 bytes) is too short"
    return ""


def verify_password(secret: str, password: str) -> bool:
    """Constant-time comparison of `password`'s hash with the stored one (a certificate user has no password)."""
    if _check_hash(secret) or secret.startswith(CERT_PREFIX):
        return False
    parts = secret.split("$")
    salt, key = base64.b64decode(parts[-2]), base64.b64decode(parts[-1])
    data = password.encode("utf-8")
    if parts[0] == "scrypt":
        n, r, p = (int(v) for v in parts[1:4])
        got = hashlib.scrypt(data, salt=salt, n=n, r=r, p=p, maxmem=2 * 128 * r * n * p + (1 << 20), dklen=len(key))
    else:
        got = hashlib.pbkdf2_hmac("sha256", data, salt, int(parts[1]), dklen=len(key))
    return hmac.compare_digest(got, key)


class LoginBudget:
    """At most `per_s` password checks in any second, for one login interface (OPC UA, the page): each check
    costs scrypt's memory and tens of ms of CPU, so a flood of guesses is refused unchecked beyond it
    instead of taking the CPU from inspection."""

    def __init__(self, per_s: int) -> None:
        self.per_s = per_s
        self._recent: Deque[float] = collections.deque()  # times of the checks in the last second
        self.refused = 0

    def take(self, now: float) -> bool:
        """True when a check may run at `now` (a monotonic time), and counts it; False (counted) otherwise."""
        while self._recent and now - self._recent[0] > 1.0:
            self._recent.popleft()
        if len(self._recent) >= self.per_s:
            self.refused += 1
            return False
        self._recent.append(now)
        return True


class Users:
    """The users of one station, read once at start; `check(name, password)` gives the User or None."""

    def __init__(self, users: List[User], origin: str = "") -> None:
        self.by_name: Dict[str, User] = {u.name: u for u in users}
        self.origin = origin

    def __len__(self) -> int:
        return len(self.by_name)

    def check(self, name: Optional[str], password: Optional[str]) -> Optional[User]:
        user = self.by_name.get(name or "")
        if user is None:
            hash_password(password or "")  # an unknown name costs as long as a wrong password
            return None
        return user if password is not None and verify_password(user.secret, password) else None

    @property
    def certificate_users(self) -> int:
        return sum(1 for u in self.by_name.values() if u.secret.startswith(CERT_PREFIX))

    def check_certificate(self, der: Optional[bytes]) -> Optional[User]:
        """The user whose certificate this is (DER bytes whose key the caller proved it holds), or None."""
        if not der:
            return None
        want = certificate_fingerprint(der)
        found = None
        for user in self.by_name.values():  # every line compared, in constant time each
            if hmac.compare_digest(user.secret, want):
                found = user
        return found


def read_users(path: str) -> Users:
    """Parse and check a users file; UserError naming the file, line and fix for anything wrong."""
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"users file {path}: cannot read it ({getattr(exc, 'strerror', None) or exc}); "
                        "give an existing text file (format: docs/OPCUA.md)") from None
    users: List[User] = []
    seen = set()
    for no, line in enumerate(lines, 1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        where = f"users file {path} line {no}"
        fields = text.split(":")
        if len(fields) != 3:
            raise UserError(f"{where}: write NAME:ROLE:HASH (make a line with `python -m ds2a.notify.users NAME ROLE`)")
        name, role, secret = (v.strip() for v in fields)
        if not NAME_RE.match(name):
            raise UserError(f"{where}: user name '{name[:64]}' must be 1-64 letters, digits or . _ @ -")
        if name in seen:
            raise UserError(f"{where}: user '{name}' is listed twice; keep one line per user")
        if role not in ROLES:
            raise UserError(f"{where}: role '{role[:32]}' is not one of {', '.join(ROLES)}")
        problem = _check_hash(secret)
        if problem:
            raise UserError(f"{where}: the password hash is unusable ({problem}); make the line again with "
                            "`python -m ds2a.notify.users NAME ROLE` (or `... --certificate FILE`)")
        seen.add(name)
        users.append(User(name, role, secret))
    if not users:
        raise UserError(f"users file {path} lists no users; add NAME:ROLE:HASH lines "
                        "(`python -m ds2a.notify.users NAME ROLE`)")
    return Users(users, path)


PASSWORD_ENV = "DS2A_PASSWORD"  # a command's password for --users when no terminal can ask (a script)


def sign_in(users_file: str, name: str) -> User:
    """A command's user, signed in against `users_file` (`ds2a override`, `ds2a review`): the password
    from PASSWORD_ENV, else asked on the terminal; UserError for a wrong one (nothing is recorded)."""
    users = read_users(users_file)
    password = os.environ.get(PASSWORD_ENV)
    if password is None:
        if not sys.stdin.isatty():
            raise UserError(f"--users {users_file}: no terminal to ask {name}'s password; set {PASSWORD_ENV}")
        password = getpass.getpass(f"password for {name}: ")
    user = users.check(name, password)
    if user is None:
        raise UserError(f"--users {users_file}: unknown user '{name[:64]}' or wrong password; nothing recorded")
    return user


def read_certificate(path: str) -> bytes:
    """A client certificate's DER bytes from a PEM or DER file; UserError naming the file otherwise."""
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding

    try:
        with open(path, "rb") as f:
            data = f.read()
        cert = x509.load_pem_x509_certificate(data) if data.lstrip().startswith(b"-----BEGIN") else \
            x509.load_der_x509_certificate(data)
    except (OSError, ValueError) as exc:
        raise UserError(f"certificate {path}: not a readable PEM or DER X.509 certificate "
                        f"({getattr(exc, 'strerror', None) or exc}); give the client's certificate file") from None
    return cert.public_bytes(Encoding.DER)


def main(argv: Optional[List[str]] = None) -> int:
    """`python -m ds2a.notify.users NAME ROLE [--certificate FILE]`: print the users-file line (a password
    asked twice, or the client certificate's fingerprint)."""
    args = sys.argv[1:] if argv is None else list(argv)
    cert = None
    if len(args) == 4 and args[2] == "--certificate":
        cert, args = args[3], args[:2]
    if len(args) != 2 or args[1] not in ROLES or not NAME_RE.match(args[0]):
        print(f"usage: python -m ds2a.notify.users NAME ROLE [--certificate FILE]   (ROLE: {', '.join(ROLES)})",
              file=sys.stderr)
        return 2
    if cert is not None:
        try:
            print(f"{args[0]}:{args[1]}:{certificate_fingerprint(read_certificate(cert))}")
        except UserError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        return 0
    password = getpass.getpass(f"password for {args[0]}: ")
    if len(password) < 8 or password != getpass.getpass("again: "):
        print("error: the passwords differ or are shorter than 8 characters", file=sys.stderr)
        return 1
    print(f"{args[0]}:{args[1]}:{hash_password(password)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
