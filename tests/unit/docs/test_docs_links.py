"""The docs point at things that exist: links, anchors, and the files and folders they name.

README.md is the front door and docs/ the manual; both name files (`bot/store/requests.py`,
`tests/scenarios/test_due_queue.py`) and link each other. A moved file or a renamed heading must
fail here, not leave a reader at a dead end. Comments in code that point to a file are checked too.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
DOCS = [
    p for p in (ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "client" / "README.md") if p.exists()
]
#: files the docs name that a command writes (not in the repository)
GENERATED = {"bench/results/latest.json"}
LINK = re.compile(r"\]\(([^)\s]+)\)")
# a path-like name in backticks or plain text: top-level folders of this repository only
PATH = re.compile(r"(?<![\w/.-])((?:bot|workers|tests|bench|client|docs|\.ci)/[\w./-]*[\w/])")
# code files whose comments may point to docs
CODE_GLOBS = (
    "bot/**/*.py",
    "workers/**/*.py",
    "bench/**/*.py",
    "Dockerfile",
    "docker-compose.yml",
    "slack-app-manifest.yml",
    ".env.example",
)


def anchors(md: Path) -> set[str]:
    """GitHub's heading anchors: lowercase, punctuation dropped, spaces to hyphens."""
    out = set()
    for line in md.read_text(encoding="utf-8").splitlines():
        if m := re.match(r"^#{1,6} (.+)$", line):
            slug = re.sub(r"[^\w\- ]", "", m.group(1).strip().lower()).replace(" ", "-")
            out.add(slug)
    return out


def _exists(target: str, base: Path) -> bool:
    path = (base / target).resolve()
    return path.exists() or any(path.parent.glob(path.name))


@pytest.mark.parametrize("md", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_and_anchor_resolves(md: Path):
    text = md.read_text(encoding="utf-8")
    broken = []
    for target in LINK.findall(text):
        if re.match(r"^[a-z]+:", target):  # http:, https:, mailto:
            continue
        file_part, _, anchor = target.partition("#")
        dest = (md.parent / file_part).resolve() if file_part else md
        if not dest.exists():
            broken.append(f"{target}: no such file")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            broken.append(f"{target}: no heading with that anchor in {dest.relative_to(ROOT)}")
    assert not broken, f"{md.relative_to(ROOT)}:\n" + "\n".join(broken)


@pytest.mark.parametrize("md", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_file_the_docs_name_exists(md: Path):
    text = re.sub(r"```.*?```", "", md.read_text(encoding="utf-8"), flags=re.S)  # examples may invent paths
    missing = sorted({p for p in PATH.findall(text) if p not in GENERATED and not _exists(p, ROOT)})
    assert not missing, f"{md.relative_to(ROOT)} names files that do not exist: {missing}"


def test_every_doc_a_code_comment_points_to_exists():
    missing = []
    for pattern in CODE_GLOBS:
        for path in ROOT.glob(pattern):
            for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
                for doc in re.findall(r"(?<![\w/.-])((?:docs/[\w./-]+\.md)|README\.md)", line):
                    if not (ROOT / doc).exists():
                        missing.append(f"{path.relative_to(ROOT)}:{n}: {doc}")
    assert not missing, "comments point to docs that do not exist:\n" + "\n".join(missing)
