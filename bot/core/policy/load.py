"""Reading a policy file: YAML without surprises, every problem with its line, then validation.

The grant types a policy may name (and their config schemas) are handed in by the caller: the
core knows no backend (bot/wiring.py passes the registry of workers/backends).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from bot.core.errors import PolicyError, PolicyFileMissing
from bot.core.identity import normalize
from bot.core.policy.approvals import reach, rules_of
from bot.core.policy.oidc import OidcConfig
from bot.core.policy.policy import Policy
from bot.core.policy.schema import (
    AUTO_APPROVE_KEYS,
    CHOICE_TAGS,
    PATTERN_HELP,
    Action,
    Approver,
    AutoApprove,
    BreakGlass,
    Pipeline,
    PolicyModel,
)
from bot.core.policy.windows import Windows, parse_window

#: Grant type name → the schema of its `grant:` keys.
GrantTypes = Mapping[str, type[BaseModel]]


# ---------------------------------------------------------------- loading and errors


#: A policy is a few hundred lines. These bounds refuse, before anything is built, documents
#: that would take the loader minutes or all the memory there is.
MAX_POLICY_BYTES = 1024 * 1024
MAX_NODES = 100_000
MAX_DEPTH = 32
NO_ALIASES = "YAML anchors and aliases are not allowed in a policy"
_TOO_LARGE = f"the policy file is larger than {MAX_POLICY_BYTES // 1024} KiB"


class _Refused(yaml.MarkedYAMLError):
    """Something a policy never needs, refused while composing (reported without the
    'not valid YAML' prefix: the YAML is valid, the policy is not)."""


class _LineLoader(yaml.SafeLoader):
    """SafeLoader for policies: refuses anchors and aliases (a policy needs none, and
    expanding them turns a few hundred bytes into billions of values), more than MAX_NODES
    values and nesting deeper than MAX_DEPTH — each at the event that breaks the rule,
    before the composer builds anything from it."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._nodes = 0
        self._depth = 0

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node:
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None) is not None:
            raise _Refused(problem=NO_ALIASES, problem_mark=event.start_mark)
        self._nodes += 1
        if self._nodes > MAX_NODES:
            raise _Refused(problem=f"a policy has at most {MAX_NODES} values", problem_mark=event.start_mark)
        if self._depth >= MAX_DEPTH:
            raise _Refused(
                problem=f"values nested deeper than {MAX_DEPTH} levels are not allowed in a policy",
                problem_mark=event.start_mark,
            )
        self._depth += 1
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep=deep)
        except (ValueError, TypeError, OverflowError) as e:  # e.g. an integer of 5 000 digits
            raise yaml.constructor.ConstructorError(problem=str(e)[:200], problem_mark=node.start_mark) from None


def _compose(text: str, source: str) -> tuple[yaml.Node | None, Any]:
    """The document's node tree (for line numbers) and its data, built from that one tree."""
    loader = _LineLoader(text)
    try:
        node = loader.get_single_node()
        return node, None if node is None else loader.construct_document(node)
    except _Refused as e:
        raise PolicyError([f"{source}:{e.problem_mark.line + 1}: {e.problem}"]) from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = mark.line + 1 if mark else "?"
        raise PolicyError([f"{source}:{line}: not valid YAML: {getattr(e, 'problem', e)}"]) from None
    finally:
        loader.dispose()


def _node_lines(node: yaml.Node, path: tuple = (), out: dict | None = None) -> dict:
    """Map each key path to the 1-based line where it stands; report duplicate keys."""
    out = {} if out is None else out
    out.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        seen: dict[Any, int] = {}
        for k, v in node.value:
            key = k.value
            line = k.start_mark.line + 1
            if key in seen:
                out.setdefault("__dupes__", []).append(
                    (path + (key,), line, f"duplicate key {key!r} (first at line {seen[key]})")
                )
            seen[key] = line
            out[path + (key,)] = line
            _node_lines(v, path + (key,), out)
    elif isinstance(node, yaml.SequenceNode):
        for i, v in enumerate(node.value):
            out[path + (i,)] = v.start_mark.line + 1
            _node_lines(v, path + (i,), out)
    return out


def _where(lines: dict, loc: tuple) -> int | None:
    loc = tuple(loc)
    while loc:
        if loc in lines:
            return lines[loc]
        loc = loc[:-1]
    return lines.get(())


def _fmt(source: str, lines: dict, loc: tuple, msg: str) -> str:
    loc = tuple(p for p in loc if p not in CHOICE_TAGS)  # pydantic's names for an entry's kind
    line = _where(lines, loc)
    dotted = ".".join(str(p) for p in loc) or "(top)"
    return f"{source}:{line or '?'}: {dotted}: {msg}"


def _message(err: Mapping[str, Any]) -> str:
    """A pydantic error in words: `unknown key`, what a mismatched ID or hash should be (never the
    regular expression), or pydantic's own message."""
    if err["type"] == "extra_forbidden":
        return "unknown key"
    if err["type"] == "string_pattern_mismatch":
        hint = PATTERN_HELP.get(err.get("ctx", {}).get("pattern"))
        if hint:
            return hint
    return err["msg"].removeprefix("Value error, ")


def _validation_errors(source: str, lines: dict, base: tuple, error: ValidationError) -> list[str]:
    return [_fmt(source, lines, base + tuple(err["loc"]), _message(err)) for err in error.errors()]


#: Top-level keys a policy cannot do without: when one of them is unusable, nothing else is checked.
_REQUIRED = ("actions",)
#: Top-level mappings whose entries are validated apart, each entry key by key: a broken key leaves
#: the rest of its entry checked, a broken entry the other entries.
_BY_ENTRY: dict[str, type[BaseModel]] = {"actions": Action, "pipelines": Pipeline}


def _part_of(loc: tuple) -> tuple | None:
    """The part of the document a schema error sits in, which the rest is checked without: one key
    of an action or pipeline, a whole entry (its name is wrong, or a key it cannot do without), or
    one top-level key. None when the error leaves nothing to check."""
    if not loc:
        return None
    if loc[0] in _BY_ENTRY and len(loc) >= 2:
        model = _BY_ENTRY[loc[0]]
        if len(loc) == 2 or loc[2] == "[key]":  # not a mapping, or a bad name
            return loc[:2]
        field = model.model_fields.get(loc[2]) if isinstance(loc[2], str) else None
        return loc[:2] if field is not None and field.is_required() else loc[:3]
    return None if loc[0] in _REQUIRED else loc[:1]


def _without(data: dict, parts: set[tuple]) -> dict:
    """`data` with `parts` (see _part_of) left out; `data` itself is not changed."""
    work = dict(data)
    for part in sorted(parts, key=len, reverse=True):
        if len(part) == 1:
            work.pop(part[0], None)
            continue
        section = work.get(part[0])
        if not isinstance(section, dict) or part[1] not in section:
            continue
        section = work[part[0]] = dict(section)
        if len(part) == 2:
            del section[part[1]]
        elif isinstance(section[part[1]], dict):
            section[part[1]] = {k: v for k, v in section[part[1]].items() if k != part[2]}
    return work


def _validate_parts(data: dict, source: str, lines: dict) -> tuple[PolicyModel | None, list[str], set[tuple]]:
    """The model of every part of the policy that fits the schema, the schema errors of the rest,
    and the parts left out — so one run reports the schema errors and the errors of everything
    else (None: a required part is broken, so only the schema errors)."""
    errors: list[str] = []
    left_out: set[tuple] = set()
    for _ in range(3):  # leaving a part out can only remove errors; a bound all the same
        try:
            return PolicyModel.model_validate(_without(data, left_out)), errors, left_out
        except ValidationError as e:
            for err in e.errors():
                line = _fmt(source, lines, err["loc"], _message(err))
                if line not in errors:
                    errors.append(line)
                part = _part_of(tuple(err["loc"]))
                if part is None:
                    return None, errors, left_out
                left_out.add(part)
    return None, errors, left_out


def _left_out_keys(left_out: set[tuple], section: str, name: str) -> set[str]:
    """Keys of one action or pipeline that were left out for their schema errors."""
    return {part[2] for part in left_out if len(part) == 3 and part[:2] == (section, name)}


#: What each check of an action reads: with one of these keys left out, the check would judge a
#: default the author never wrote, so it is skipped (the key's own error is reported).
_APPROVER_KEYS = {"approvers", "approvers_by_environment", "approvals", "approvals_required"}
_CONDITION_KEYS = _APPROVER_KEYS | {"auto_approve", "ttl"}


def _grant_errors(
    source: str, lines: dict, base: tuple, grant: Mapping[str, Any], grant_types: GrantTypes
) -> tuple[list[str], tuple[str, BaseModel] | None]:
    """An action's `grant:`: its type is known and its keys fit that type's schema."""
    cfg = dict(grant)
    gtype = cfg.pop("type", None)
    if gtype not in grant_types:
        known = ", ".join(sorted(t for t, schema in grant_types.items() if getattr(schema, "offered", True)))
        return [_fmt(source, lines, base + ("grant", "type"), f"unknown grant type {gtype!r} (known: {known})")], None
    try:
        return [], (gtype, grant_types[gtype].model_validate(cfg))
    except ValidationError as e:
        return _validation_errors(source, lines, base + ("grant",), e), None


def parse_policy(text: str, source: str = "<policy>", *, grant_types: GrantTypes) -> Policy:
    """Validate a policy's YAML text. Raises PolicyError listing every problem with its line: the
    schema's and, for every part that fits the schema, the rest."""
    if len(text) > MAX_POLICY_BYTES:
        raise PolicyError([f"{source}:1: {_TOO_LARGE}"])
    node, data = _compose(text, source)
    if node is None:
        raise PolicyError([f"{source}:1: the policy is empty"])
    lines = _node_lines(node)
    errors = [_fmt(source, lines, loc, msg) for loc, _, msg in lines.pop("__dupes__", [])]
    if not isinstance(data, dict):
        raise PolicyError([f"{source}:1: the policy must be a mapping"])
    model, schema_errors, left_out = _validate_parts(data, source, lines)
    errors += schema_errors
    if model is None:
        raise PolicyError(errors)
    broken_actions = {part[1] for part in left_out if part[0] == "actions" and len(part) == 2}
    for name in broken_actions:
        raw = data["actions"].get(name)
        if isinstance(raw, dict) and isinstance(raw.get("grant"), dict):
            errors += _grant_errors(source, lines, ("actions", name), raw["grant"], grant_types)[0]

    grants: dict[str, Any] = {}
    windows: dict[str, Windows] = {}
    if model.break_glass is not None:
        errors += _break_glass_errors(source, lines, ("break_glass",), model.break_glass)
    for name, action in model.actions.items():
        base = ("actions", name)
        grant_errors, grant = _grant_errors(source, lines, base, action.grant, grant_types)
        errors += grant_errors
        if grant is not None:
            grants[name] = grant
        # keys left out for an error of their own are not judged again as if they were unset
        skipped = _left_out_keys(left_out, "actions", name)
        channel_unknown = "channel" in skipped or ("defaults",) in left_out
        if not action.channel and not model.defaults.channel and not channel_unknown:
            errors.append(_fmt(source, lines, base, "no channel: set actions.<name>.channel or defaults.channel"))
        if not skipped & _APPROVER_KEYS:
            if not action.approvers and not action.approvers_by_environment and not action.approvals:
                errors.append(_fmt(source, lines, base, "no approvers: set approvers or approvers_by_environment"))
            errors += _rule_errors(source, lines, base, name, action)
            approver_sets = [(("approvers",), action.approvers)] if action.approvers else []
            approver_sets += [
                (("approvers_by_environment", env), people) for env, people in action.approvers_by_environment.items()
            ]
            for loc, approvers in approver_sets:
                errors += _approver_errors(source, lines, base, loc, approvers, action.approvals_required)
        if not skipped & _CONDITION_KEYS:
            errors += _condition_errors(source, lines, base, action)
        parsed: list = []
        for i, spec in enumerate(action.windows):
            try:
                parsed.append(parse_window(spec))
            except ValueError as e:
                errors.append(_fmt(source, lines, base + ("windows", i), str(e)))
        windows[name] = Windows(tuple(parsed))
        if isinstance(action.break_glass, BreakGlass):
            errors += _break_glass_errors(source, lines, base + ("break_glass",), action.break_glass)
        if action.ttl.default > action.ttl.max:
            errors.append(_fmt(source, lines, base + ("ttl",), "default is longer than max"))

    seen_people: dict[str, str] = {}
    for person in model.people:
        key = normalize(person)
        if not key:
            errors.append(_fmt(source, lines, ("people", person), "an empty identity names nobody"))
        elif key in seen_people:
            errors.append(_fmt(source, lines, ("people", person), f"names the same person as {seen_people[key]!r}"))
        seen_people.setdefault(key, person)

    hashes: dict[str, str] = {}
    gated: dict[tuple[str, str, str], str] = {}
    for name, p in model.pipelines.items():
        base = ("pipelines", name)
        if p.gate_key is not None:
            if p.gate_key in gated:
                errors.append(
                    _fmt(source, lines, base + (p.gate_key[0],), f"the same gate as pipeline {gated[p.gate_key]!r}")
                )
            gated.setdefault(p.gate_key, name)
        skipped = _left_out_keys(left_out, "pipelines", name)
        if (p.token_sha256 is None) == (p.oidc is None) and not skipped & {"token_sha256", "oidc"}:
            errors.append(_fmt(source, lines, base, "set exactly one of token_sha256 or oidc"))
        if p.token_sha256 and p.token_sha256 in hashes:
            errors.append(
                _fmt(source, lines, base + ("token_sha256",), f"same token as pipeline {hashes[p.token_sha256]!r}")
            )
        if p.token_sha256:
            hashes[p.token_sha256] = name
        if p.oidc is not None:
            try:
                OidcConfig.model_validate(p.oidc)
            except ValidationError as e:
                errors += _validation_errors(source, lines, base + ("oidc",), e)
        for i, a in enumerate(p.actions):
            if a not in model.actions and a not in broken_actions:  # a broken action has its own errors
                errors.append(_fmt(source, lines, base + ("actions", i), f"unknown action {a!r}"))
    if errors:
        raise PolicyError(errors)
    return Policy(
        model=model,
        grants=grants,
        sha256=hashlib.sha256(text.encode()).hexdigest(),
        source=source,
        windows=windows,
        text=text,
    )


def _approver_errors(
    source: str, lines: dict, base: tuple, loc: tuple, approvers: list[Approver], required: int
) -> list[str]:
    errors = []
    people = {a for a in approvers if isinstance(a, str) and a[0] in "UW"}
    groups = [a for a in approvers if a not in people]  # user groups and on-call schedules
    if not approvers:
        errors.append(_fmt(source, lines, base + loc, "the approver list is empty"))
    if len(set(approvers)) != len(approvers):
        errors.append(_fmt(source, lines, base + loc, "an approver is listed twice"))
    if approvers and not groups and required > len(people):
        where = base + ("approvals_required",) if loc == ("approvers",) else base + loc
        errors.append(
            _fmt(
                source,
                lines,
                where,
                f"needs {required} distinct approvers but only {len(people)} can ever approve",
            )
        )
    return errors


def _rule_errors(source: str, lines: dict, base: tuple, name: str, action: Action) -> list[str]:
    """`approvals:` rules: not mixed with approvers, no entry twice, and able to be met at all."""
    if not action.approvals:
        return []
    errors = []
    for key in ("approvers", "approvers_by_environment", "approvals_required"):
        if key in action.model_fields_set:
            errors.append(_fmt(source, lines, base + (key,), "set approvals or approvers, not both"))
    rules = rules_of(name, action)
    some_rule_alone = False
    for i, (rule, spec) in enumerate(zip(rules, action.approvals, strict=True)):
        if len(set(spec.from_)) != len(spec.from_):
            errors.append(_fmt(source, lines, base + ("approvals", i, "from"), "an approver is listed twice"))
        alone = reach([rule])
        if not alone.ok:
            some_rule_alone = True
            errors.append(
                _fmt(
                    source,
                    lines,
                    base + ("approvals", i, "count"),
                    f"needs {rule.count} distinct approvers but only {alone.reachable} can ever approve",
                )
            )
    together = reach(rules)
    if not together.ok and not some_rule_alone:  # one rule that cannot be met says it already
        errors.append(
            _fmt(
                source,
                lines,
                base + ("approvals",),
                f"the rules need {together.needed} distinct people (one person counts for one rule only) "
                f"but at most {together.reachable} can ever approve",
            )
        )
    return errors


def _condition_errors(source: str, lines: dict, base: tuple, action: Action) -> list[str]:
    auto = action.auto_approve
    if auto is None:
        return []
    if isinstance(auto, AutoApprove):
        return _auto_rule_errors(source, lines, base + ("auto_approve",), action, auto)
    return [
        e
        for i, rule in enumerate(auto)
        for e in _auto_rule_errors(source, lines, base + ("auto_approve", i), action, rule)
    ]


def _auto_rule_errors(source: str, lines: dict, loc: tuple, action: Action, auto: AutoApprove) -> list[str]:
    errors = []
    if not auto.conditions and auto.oncall is None:
        errors.append(
            _fmt(
                source,
                lines,
                loc,
                "auto_approve needs at least one condition on the verified context "
                f"({', '.join(AUTO_APPROVE_KEYS)}) or an oncall schedule",
            )
        )
    if auto.max_ttl is not None and auto.max_ttl > action.ttl.max:
        errors.append(_fmt(source, lines, loc + ("max_ttl",), "is longer than the action's ttl.max"))
    if action.approvers_by_environment and not action.approvers:
        # over the caps a request goes to humans: every environment it may match needs approvers
        known = sorted(action.approvers_by_environment)
        for i, env in enumerate(auto.environment or []):
            if env not in action.approvers_by_environment:
                errors.append(
                    _fmt(
                        source,
                        lines,
                        loc + ("environment", i),
                        f"environment {env!r} has no approvers (approvers_by_environment has: "
                        f"{', '.join(known)}; globs are not allowed here)",
                    )
                )
        if auto.environment is None:
            errors.append(
                _fmt(
                    source,
                    lines,
                    loc,
                    "with approvers_by_environment and no default approvers, auto_approve must list its environments",
                )
            )
    return errors


def _break_glass_errors(source: str, lines: dict, loc: tuple, bg: BreakGlass) -> list[str]:
    if len(set(bg.approvers)) != len(bg.approvers):
        return [_fmt(source, lines, loc + ("approvers",), "an approver is listed twice")]
    return []


def decode_policy(data: bytes, source: str) -> str:
    """A policy file's bytes as text: PolicyError when too large or not UTF-8."""
    if len(data) > MAX_POLICY_BYTES:
        raise PolicyError([f"{source}:1: {_TOO_LARGE}"])
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise PolicyError([f"{source}:{line}: the policy is not UTF-8 text"]) from None


def load_policy(path: str | Path, *, grant_types: GrantTypes) -> Policy:
    p = Path(path)
    try:
        with p.open("rb") as f:
            data = f.read(MAX_POLICY_BYTES + 1)
    except FileNotFoundError:
        raise PolicyFileMissing([f"{p}: policy file not found"]) from None
    except OSError as e:
        raise PolicyError([f"{p}: cannot read policy file: {e.strerror}"]) from None
    return parse_policy(decode_policy(data, str(p)), source=str(p), grant_types=grant_types)
