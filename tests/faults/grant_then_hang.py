#!/usr/bin/env python3
"""An `exec` grant command that creates the identity, then hangs before answering (flag `hang-after-grant`).

Like a real target it is idempotent per request: the identity is named after the request id, and
a second grant for the same request resets its password instead of creating another identity.
"""

import json
import os
import secrets
import sys
import time

req = json.load(sys.stdin)
state = os.environ["JIT_TEST_STATE"]
username = f"deploy-{req['id'][:8]}"
password = f"pw-{secrets.token_hex(8)}"
with open(os.path.join(state, f"{req['id']}.grant"), "a") as f:
    f.write(json.dumps({"at": time.time(), "username": username, "password": password, "request": req}) + "\n")
    f.flush()
    os.fsync(f.fileno())
hang = os.path.join(state, "hang-after-grant")
if os.path.exists(hang):
    time.sleep(float(open(hang).read() or "30"))
print(json.dumps({"username": username, "password": password}))
