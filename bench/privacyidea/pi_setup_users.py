"""Populate a fresh privacyIDEA database for bench/bench_peer.py (runs in privacyIDEA's venv).

    bench/privacyidea/venv/bin/python bench/privacyidea/pi_setup_users.py \
        PI_CFG PASSWD_FILE USERS_JSON

USERS_JSON is a list of {"name": ..., "seed": <hex>}. Creates a passwd-file resolver
(``passwdresolver`` reading PASSWD_FILE), the realm ``bench`` on it, and per user one TOTP token
(SHA1, 6 digits, 30 s step, the given hex seed) assigned to that user, with the token PIN given
in the environment variable PI_BENCH_PIN.

The PIN is hashed ONCE with privacyIDEA's own ``pass_hash`` (the CryptContext built from this
pi.cfg's PI_HASH_ALGO_LIST / PI_HASH_ALGO_PARAMS) and that one salted hash is stored on every
token: verifying it costs exactly what verifying a per-token hash costs (the parameters live in
the hash string), but setting up thousands of tokens does not pay argon2 thousands of times.
"""

from __future__ import annotations

import json
import os
import sys


def main() -> int:
    cfg, passwd_file, users_json = sys.argv[1:4]
    pin = os.environ.get("PI_BENCH_PIN", "")
    os.environ["PRIVACYIDEA_CONFIGFILE"] = cfg
    from privacyidea.app import create_app
    from privacyidea.lib.crypto import pass_hash
    from privacyidea.lib.realm import set_realm
    from privacyidea.lib.resolver import save_resolver
    from privacyidea.lib.token import init_token
    from privacyidea.lib.user import User
    from privacyidea.models import Token, db
    from sqlalchemy import update

    with open(users_json) as f:
        users = json.load(f)
    app = create_app("production", config_file=cfg, silent=True)
    with app.app_context():
        save_resolver({"resolver": "benchfile", "type": "passwdresolver", "fileName": passwd_file})
        set_realm("bench", [{"name": "benchfile"}])
        shared_hash = pass_hash(pin)
        for n, user in enumerate(users):
            token = init_token(
                {
                    "type": "totp",
                    "serial": f"BENCH{n:06d}",
                    "otpkey": user["seed"],
                    "genkey": 0,
                    "otplen": 6,
                    "timeStep": 30,
                    "hashlib": "sha1",
                },
                user=User(user["name"], "bench"),
            )
            del token
        # One UPDATE after all tokens exist: init_token commits and reloads its own row.
        db.session.execute(
            update(Token).where(Token.serial.like("BENCH%")).values(pin_hash=shared_hash)
        )
        db.session.commit()
        print(f"created {len(users)} TOTP tokens; pin hash scheme: {shared_hash.split('$')[1]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
