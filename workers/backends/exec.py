"""`exec`: run your own grant and revoke commands; the grant command's stdout is the credential."""

from __future__ import annotations

import json
import os
import subprocess
from typing import Any

from pydantic import Field

from bot.core.usage import secret_values
from workers.backends import session_summary
from workers.backends.base import BackendConfig, GrantBackend, GrantError, GrantRequest, register

#: Variables a command always gets; anything else must be listed in `env_passthrough`,
#: so the bot's own secrets (Slack token, JIT_SECRET_KEY) never reach a script by accident.
_BASE_ENV = ("PATH", "HOME", "LANG", "LC_ALL", "TZ", "TMPDIR")


class ExecConfig(BackendConfig):
    grant_command: list[str] = Field(min_length=1)
    revoke_command: list[str] = Field(min_length=1)
    timeout: float | None = Field(None, gt=0, description="seconds; default JIT_EXEC_TIMEOUT (30)")
    env_passthrough: list[str] = []
    enforces_expiry: bool = False


@register
class ExecBackend(GrantBackend):
    type = "exec"
    Config = ExecConfig

    def _env(self, request: GrantRequest) -> dict[str, str]:
        env = {k: self.env.environ[k] for k in (*_BASE_ENV, *self.config.env_passthrough) if k in self.env.environ}
        env.update(
            JIT_REQUEST_ID=request.id,
            JIT_ACTION=request.action,
            JIT_EXPIRES_AT=request.as_json()["expires_at"],
            JIT_PIPELINE=request.pipeline,
        )
        return env

    def _run(self, argv: list[str], payload: dict[str, Any], request: GrantRequest) -> str:
        timeout = self.config.timeout or self.env.exec_timeout
        try:
            proc = subprocess.run(
                argv,
                input=json.dumps(payload).encode(),
                capture_output=True,
                timeout=timeout,
                env=self._env(request),
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise GrantError(f"{os.path.basename(argv[0])} timed out after {timeout:g}s") from None
        except OSError as e:
            raise GrantError(f"{os.path.basename(argv[0])} could not start: {e.strerror}") from None
        if proc.returncode != 0:
            last = proc.stderr.decode(errors="replace").strip().splitlines()[-1:] or [""]
            raise GrantError(f"{os.path.basename(argv[0])} exited {proc.returncode}: {last[0][:200]}")
        return proc.stdout.decode(errors="replace")

    def grant(self, request: GrantRequest) -> dict[str, Any]:
        out = self._run(self.config.grant_command, request.as_json(), request)
        try:
            cred = json.loads(out)
        except ValueError:
            raise GrantError("grant_command did not print a JSON object") from None
        if not isinstance(cred, dict):
            raise GrantError("grant_command did not print a JSON object")
        return cred

    def revoke(self, request: GrantRequest, credential: dict[str, Any] | None) -> dict[str, Any] | None:
        """Run revoke_command; a JSON object it prints is the session summary (scrubbed of the
        credential and of the passed-through variables' values; not kept past 64 KiB)."""
        out = self._run(self.config.revoke_command, {**request.as_json(), "credential": credential}, request)
        passed = [v for k in self.config.env_passthrough if len(v := self.env.environ.get(k) or "") >= 8]
        return session_summary.from_output(out.strip(), [*secret_values(credential), *passed])
