"""Reloading the policy without a restart: on SIGHUP and when the file changes.

Every process that serves or works (each gunicorn worker, `jit worker` and its children)
runs a `PolicyReloader`: a thread that checks the file every 2 s (its stat signature, then its
SHA-256) and reloads at once when woken by SIGHUP. An invalid file is rejected and the policy
in force stays; the errors go to the audit trail and the audit channel once, however many
processes notice. A valid new file is put in force, and one process records it
(`policy.loaded` with a summary of what changed) and tells the audit channel.

A changed file is read only once it holds still (SETTLE): a file being written in place is
never put in force halfway. Editing by atomic replace — write a temporary file in the same
directory, then rename it over the policy — means a reader only ever sees a whole file.

gunicorn: SIGHUP to the master makes gunicorn start fresh workers and retire the old ones
gracefully; each new worker loads the file as it boots (`load_initial`). If the file is invalid
by then, the worker starts with the last policy recorded in Redis instead of failing to boot.
A SIGHUP sent to one gunicorn worker kills it (gunicorn resets the signal) and the master
replaces it, which reloads the same way. File changes need no signal at all.

Requests in flight keep their rules: each carries its policy's sha256, and every version's
text is kept in Redis (bot/store/policy_versions.py).
"""

from __future__ import annotations

import hashlib
import logging
import os
import signal
import threading
import time

from bot.core.errors import PolicyError
from bot.core.policy.load import MAX_POLICY_BYTES, decode_policy
from bot.core.policy.policy import Policy
from bot.decision.slack.views.policy_notices import describe_rejection
from bot.store import keys

log = logging.getLogger("jit.policy")

POLL_INTERVAL = 2.0
#: A changed file is read as a policy only once it has stayed the same this long: two reads
#: this far apart agree, and its size, mtime and inode did not move in between. A writer
#: that truncates the file and writes it in pieces is not caught halfway — a prefix of a
#: policy is often a valid policy with weaker rules.
SETTLE = 0.5
#: A file still changing after this long is left for the next check.
SETTLE_MAX = 10.0
#: Re-read the file even when its stat looks unchanged (coarse mtimes, same-size rewrites).
FULL_READ_EVERY = 30.0
MAX_ERRORS_POSTED = 20


# ------------------------------------------------------------------------- what changed


class _StillChanging(Exception):
    """The file did not hold still for SETTLE seconds within SETTLE_MAX."""


def _stat_signature(path: str) -> tuple | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino, st.st_dev)


def _read_bytes(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read(MAX_POLICY_BYTES + 1)


class PolicyReloader:
    """Watches one runtime's policy file; reloads on change or on `wake()` (SIGHUP).

    A file is put in force only once it has settled (SETTLE): edit it by writing a temporary
    file next to it and renaming it over the policy (what most editors, `install` and
    configuration-management tools do); a rename is atomic, so every read sees the old file or
    the new one whole.
    """

    def __init__(self, rt, interval: float = POLL_INTERVAL, settle: float = SETTLE) -> None:
        self.rt = rt
        self.interval = interval
        self.settle = settle
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._stat: tuple | None = None
        self._last_read = 0.0
        self._rejected_sha: str | None = None

    # -- reading a file that may be being written

    def _settled(self, path: str, data: bytes) -> bytes:
        """The file's bytes once two reads `settle` seconds apart agree and its stat signature
        did not change around them. `data` is a first read. OSError if it cannot be read."""
        give_up = time.monotonic() + max(SETTLE_MAX, 2 * self.settle)
        before = _stat_signature(path)
        while True:
            if self._stop.wait(self.settle) or time.monotonic() > give_up:
                raise _StillChanging(path)
            again = _read_bytes(path)
            after = _stat_signature(path)
            if again == data and before == after and after is not None and after[1] == len(again):
                return again
            data, before = again, after

    # -- one reload

    def reload(self, trigger: str = "file") -> str:
        """Load the file if it differs from the policy in force: 'loaded', 'unchanged',
        'rejected' (the old policy stays) or 'changing' (still being written: the next check
        looks again)."""
        path = str(self.rt.policy_file)
        try:
            data = _read_bytes(path)
            sha = hashlib.sha256(data).hexdigest()
            if sha == self.rt.policy.sha256:
                self._rejected_sha = None
                return "unchanged"
            if sha == self._rejected_sha and trigger == "file":
                return "rejected"
            data = self._settled(path, data)
        except OSError as e:
            self._reject(None, [f"{path}: cannot read policy file: {e.strerror or e}"], trigger)
            return "rejected"
        except _StillChanging:
            log.warning("policy file %s still changing; trying again at the next check", path)
            self._stat = None  # the next poll reads it whatever its stat says
            return "changing"
        sha = hashlib.sha256(data).hexdigest()
        if sha == self.rt.policy.sha256:
            self._rejected_sha = None
            return "unchanged"
        try:
            policy = self.rt.parse_policy(decode_policy(data, path), source=path)
        except PolicyError as e:
            self._reject(sha, e.errors, trigger)
            return "rejected"
        self._rejected_sha = None
        previous = self.rt.set_policy(policy)
        log.warning(
            "policy reloaded (%s): %s → %s",
            trigger,
            previous.sha256[:12] if previous else "-",
            policy.sha256[:12],
        )
        try:
            self.rt.record_policy_loaded(trigger)
        except Exception as e:  # noqa: BLE001 - in force already; the next load records it
            log.warning("could not record the policy load: %s", type(e).__name__)
        return "loaded"

    def load_initial(self) -> Policy:
        """At a worker's boot: the file's policy once it has settled, or, when the file is
        invalid (or unreadable, or never holds still) now, the last policy recorded in Redis
        (so a bad edit cannot stop gunicorn from replacing workers)."""
        path = str(self.rt.policy_file)
        file_sha = None
        try:
            data = self._settled(path, _read_bytes(path))
            file_sha = hashlib.sha256(data).hexdigest()
            policy = self.rt.parse_policy(decode_policy(data, path), source=path)
        except (OSError, _StillChanging, PolicyError) as e:
            if isinstance(e, PolicyError):
                errors = e.errors
            elif isinstance(e, OSError):
                errors = [f"{path}: cannot read policy file: {e.strerror or e}"]
            else:
                errors = [f"{path}: the file kept changing for {SETTLE_MAX:.0f} s"]
            sha = self.rt.redis.get(keys.policy_current())
            last = self.rt.policy_store.get(sha) if sha else None
            if last is None:
                raise PolicyError(errors) from None
            self.rt.set_policy(last)
            self._reject(file_sha, errors, "start")
            return last
        self.rt.set_policy(policy)
        return policy

    def _reject(self, sha: str | None, errors: list[str], trigger: str) -> None:
        self._rejected_sha = sha
        in_force = self.rt.policy.sha256
        log.error("policy file rejected (%s); keeping %s: %s", trigger, in_force[:12], errors[0])
        try:
            first = self.rt.redis.set(keys.policy_rejected(sha or "unreadable"), in_force, nx=True, ex=86400)
            if not first:
                return  # another process reported this file already
            self.rt.audit.append(
                "policy.rejected",
                actor="jit",
                outcome="refused",
                details={
                    "sha256": sha,
                    "source": self.rt.policy_file,
                    "errors": errors[:100],
                    "trigger": trigger,
                    "in_force_sha256": in_force,
                },
            )
            self.rt.post_audit_notice(describe_rejection(self.rt.policy_file, sha, in_force, errors, trigger))
        except Exception as e:  # noqa: BLE001 - Redis down: the log line above stands
            log.warning("could not record the rejected policy: %s", type(e).__name__)

    # -- the watcher

    def _changed(self) -> bool:
        sig = _stat_signature(self.rt.policy_file)
        due = time.monotonic() - self._last_read >= FULL_READ_EVERY
        if sig == self._stat and not due:
            return False
        self._stat = sig
        self._last_read = time.monotonic()
        return True

    def check_once(self) -> str | None:
        """One poll: reload when woken or when the file looks changed."""
        if self._wake.is_set():
            self._wake.clear()
            return self.reload("sighup")
        if self._changed():
            return self.reload("file")
        return None

    def run(self) -> None:
        self._changed()  # the file as it is now is the one already loaded
        while not self._stop.is_set():
            self._wake.wait(self.interval)
            if self._stop.is_set():
                return
            try:
                self.check_once()
            except Exception:  # noqa: BLE001 - the watcher must outlive any one failure
                log.exception("policy reload failed")

    def start(self) -> PolicyReloader:
        self._thread = threading.Thread(target=self.run, name="jit-policy-reload", daemon=True)
        self._thread.start()
        return self

    def wake(self) -> None:
        """Reload now (the SIGHUP handler calls this: it only sets a flag)."""
        self._wake.set()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=5)


def install_sighup(reloader: PolicyReloader, also: list | None = None) -> None:
    """SIGHUP → reload now. `also` is called with no arguments too (e.g. forward to children).
    Only the main thread may install signal handlers."""

    def on_hup(signum, frame):  # noqa: ARG001
        reloader.wake()
        for fn in also or []:
            fn()

    signal.signal(signal.SIGHUP, on_hup)


def watch(rt, sighup: bool = False, also: list | None = None) -> PolicyReloader:
    """Start watching `rt`'s policy file (and, in a main thread, SIGHUP)."""
    reloader = PolicyReloader(rt).start()
    if sighup:
        install_sighup(reloader, also)
    return reloader
