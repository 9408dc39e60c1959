"""Writes pyjwt.json, the PyJWT-made tokens that tests/jwt/main.rs checks
our verifier against (src/auth.rs). Run once, commit the output:

    python3 -m venv /tmp/pyjwt && /tmp/pyjwt/bin/pip install pyjwt
    /tmp/pyjwt/bin/python tests/jwt/make_pyjwt_vectors.py > tests/jwt/pyjwt.json

Every token expires in 2100; "expect" is the user id it must verify to or
the error it must be refused with.
"""

import json

import jwt

SECRET = "pyjwt-interop-secret-0123456789abcdef"
PREVIOUS = "pyjwt-previous-secret-fedcba9876543210"
EXP = 4102444800  # 2100-01-01T00:00:00Z


def vector(name, token, expect, secret=SECRET):
    return {"name": name, "secret": secret, "token": token, "expect": expect}


vectors = [
    vector("plain", jwt.encode({"sub": "py-user-1", "exp": EXP}, SECRET, algorithm="HS256"), {"ok": "py-user-1"}),
    vector(
        "iat and nbf in the past, extra claims",
        jwt.encode(
            {"sub": "py-user-2", "exp": EXP, "nbf": 1700000000, "iat": 1700000000, "iss": "shop", "scope": "claim"},
            SECRET,
            algorithm="HS256",
        ),
        {"ok": "py-user-2"},
    ),
    vector(
        "header with kid (not one of the two usual headers)",
        jwt.encode({"sub": "py-user-3", "exp": EXP}, SECRET, algorithm="HS256", headers={"kid": "k1"}),
        {"ok": "py-user-3"},
    ),
    vector(
        "non-ASCII subject (escaped by json.dumps)",
        jwt.encode({"sub": "caf\u00e9", "exp": EXP}, SECRET, algorithm="HS256"),
        {"ok": "caf\u00e9"},
    ),
    vector(
        "signed with the previous secret",
        jwt.encode({"sub": "py-user-4", "exp": EXP}, PREVIOUS, algorithm="HS256"),
        {"ok": "py-user-4"},
    ),
    vector("expired", jwt.encode({"sub": "py-user-5", "exp": 1000000000}, SECRET, algorithm="HS256"), {"err": "Expired"}),
    vector(
        "not yet valid",
        jwt.encode({"sub": "py-user-6", "exp": EXP, "nbf": EXP - 1}, SECRET, algorithm="HS256"),
        {"err": "NotYetValid"},
    ),
    vector("HS384", jwt.encode({"sub": "py-user-7", "exp": EXP}, SECRET, algorithm="HS384"), {"err": "Algorithm"}),
    vector("alg none", jwt.encode({"sub": "py-user-8", "exp": EXP}, None, algorithm="none"), {"err": "Algorithm"}),
    vector(
        "no exp",
        jwt.encode({"sub": "py-user-9"}, SECRET, algorithm="HS256"),
        {"err": "Malformed"},
    ),
]

print(json.dumps({"made_by": f"PyJWT {jwt.__version__}", "previous_secret": PREVIOUS, "vectors": vectors}, indent=2))
