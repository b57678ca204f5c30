"""Builds a process's parts: the one module of bot/ that imports workers/ (the RQ dispatcher and
the grant backends), handing them to the Runtime that every edge and job receives."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bot.core.policy import load
from bot.core.policy.policy import Policy
from bot.runtime import Plugins, Runtime, environ
from bot.settings import Settings
from workers import run
from workers.backends import registry
from workers.backends.base import BackendEnv
from workers.queue.dispatch import Dispatcher


def _make_backend(cls: Any, config: Any, rt: Runtime) -> Any:
    env = BackendEnv(environ=environ(), exec_timeout=rt.settings.jit_exec_timeout, token_signer=rt.signer)
    return cls(config, env)


PLUGINS = Plugins(effects=Dispatcher, backends=registry, make_backend=_make_backend)


def build(settings: Settings, policy_path: str | None = None) -> Runtime:
    """A process's parts, built lazily from its settings."""
    return Runtime(settings, PLUGINS, policy_path=policy_path)


def parse_policy(text: str, source: str = "<policy>") -> Policy:
    """A policy's text checked against every grant type this installation knows."""
    return load.parse_policy(text, source, grant_types=PLUGINS.grant_types())


def load_policy(path: str | Path) -> Policy:
    return load.load_policy(path, grant_types=PLUGINS.grant_types())


def run_worker(rt: Runtime, concurrency: int = 2, burst: bool = False, scheduler: bool = True) -> int:
    """`jit worker`: RQ workers and the scheduler; forked children build their parts with `build`."""
    return run.run_worker(rt, build, concurrency=concurrency, burst=burst, scheduler=scheduler)
