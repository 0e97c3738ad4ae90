"""Make a token-signing key: `python -m services.runtime.keygen --kid KID --private-key FILE`.

Writes the private JWK (with its kid) to FILE, readable by its owner only, for the one who signs with
it (GIFTCOIN_JWT_SIGNING_KEY_FILE: the issuer, or a service for its own `service:` tokens), and prints
the public JWK, for the JWKS that the services verify with (GIFTCOIN_JWT_KEYS). A service's own key
has the kid `service:<name>/<version>` (it then signs only `service:<name>` tokens); see docs/deploy.md
for rotation.
"""

from __future__ import annotations

import argparse
import json
import sys

from services.runtime.auth import ALGORITHMS, keygen


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m services.runtime.keygen", description=__doc__.split("\n")[0])
    parser.add_argument("--kid", required=True, help="key id, e.g. issuer/2026-12 or service:gifting/2026-12")
    parser.add_argument("--private-key", required=True, help="file to create with the private JWK (must not exist)")
    parser.add_argument("--algorithm", choices=ALGORITHMS, default="EdDSA")
    args = parser.parse_args(argv)
    try:
        public = keygen(args.kid, args.private_key, args.algorithm)
    except FileExistsError:
        print(f"keygen: {args.private_key} exists: choose a new file for a new key", file=sys.stderr)
        return 2
    print(json.dumps(public, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
