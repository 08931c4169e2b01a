#!/bin/sh
# Regenerates the test keys (run once; the outputs are committed). Needs openssl and python3.
# *.key.pem: PKCS#8 private keys (tests sign with them); *.pub.pem: SPKI public keys;
# jwks.json: the public keys as a JWKS (kids rsa1, rsa2, ec1, ed1).
set -eu
cd "$(dirname "$0")"
openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out rsa1.key.pem
openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out rsa2.key.pem
openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out ec1.key.pem
openssl genpkey -algorithm ED25519 -out ed1.key.pem
for k in rsa1 rsa2 ec1 ed1; do openssl pkey -in $k.key.pem -pubout -out $k.pub.pem; done
# Raw public numbers for the JWKS: RSA modulus (hex), EC/Ed public point (DER tail).
python3 - <<'PY'
import base64, json, subprocess
def b64u(b): return base64.urlsafe_b64encode(b).rstrip(b"=").decode()
def der(k): return subprocess.run(["openssl", "pkey", "-pubin", "-in", k + ".pub.pem", "-outform", "DER"], check=True, capture_output=True).stdout
keys = []
for kid in ["rsa1", "rsa2"]:
    mod = subprocess.run(["openssl", "rsa", "-pubin", "-in", kid + ".pub.pem", "-noout", "-modulus"], check=True, capture_output=True, text=True).stdout.strip().split("=")[1]
    keys.append({"kty": "RSA", "kid": kid, "use": "sig", "alg": "RS256", "n": b64u(bytes.fromhex(mod)), "e": "AQAB"})
point = der("ec1")[-65:]   # SPKI ends with the uncompressed point 04||x||y
assert point[0] == 4
keys.append({"kty": "EC", "kid": "ec1", "use": "sig", "crv": "P-256", "x": b64u(point[1:33]), "y": b64u(point[33:])})
keys.append({"kty": "OKP", "kid": "ed1", "use": "sig", "crv": "Ed25519", "x": b64u(der("ed1")[-32:])})
json.dump({"keys": keys}, open("jwks.json", "w"), indent=2)
PY
