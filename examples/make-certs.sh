#!/bin/sh
# Make the certificates the *-cert.xml examples refer to (a CA and two gateways each, no external CA).
# PYTHON names the interpreter that has the ike package (default python3), e.g. PYTHON=.venv/bin/python.
set -e
here=$(dirname "$0")
"${PYTHON:-python3}" -m ike.certgen --out "$here/certs" --ca "CN=ike example CA,O=ike" \
    --host gw-a.example,198.18.0.1 --host gw-b.example,198.18.0.2
"${PYTHON:-python3}" -m ike.certgen --out "$here/certs/ecdsa" --key ecdsa --ca "CN=ike example ECDSA CA,O=ike" \
    --host "CN=gw-a,O=ike example,2001:db8::a" --host "CN=gw-b,O=ike example,2001:db8::b"
