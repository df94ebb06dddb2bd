#!/usr/bin/env python3
"""README.md and docs/*.md: every relative link names a file that exists
and, with #anchor, a heading in it (GitHub's anchors). Run by `make test`;
the check is first run on a document with a broken link and anchor, and
must report both."""
import glob
import os
import re
import sys
import tempfile


def slug(title):
    title = re.sub(r"[^\w\- ]", "", title.lower())
    return title.replace(" ", "-")


def anchors(path):
    out, fence = set(), False
    for line in open(path, encoding="utf-8"):
        if line.startswith("```"):
            fence = not fence
        m = re.match(r"^(#{1,6}) (.*)$", line.rstrip("\n"))
        if m and not fence:
            out.add(slug(m.group(2)))
    return out


def broken_links(paths):
    problems = []
    for path in paths:
        text = open(path, encoding="utf-8").read()
        # Code is not a link: fenced blocks and inline spans out.
        text = re.sub(r"```.*?```", "", text, flags=re.S)
        text = re.sub(r"`[^`\n]*`", "", text)
        for m in re.finditer(r"\]\(([^)\s]+)\)", text):
            link = m.group(1)
            if re.match(r"^[a-z]+:", link):
                continue
            target, _, anchor = link.partition("#")
            full = os.path.normpath(os.path.join(os.path.dirname(path), target)) if target else path
            if not os.path.exists(full):
                problems.append(f"{path}: {link}: no such file")
            elif anchor and full.endswith(".md") and anchor not in anchors(full):
                problems.append(f"{path}: {link}: no such heading")
    return problems


def main():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with tempfile.TemporaryDirectory() as d:
        bad = os.path.join(d, "bad.md")
        open(bad, "w").write("# Title\n\n[a](missing.md) [b](#nowhere) [c](#title)\n")
        caught = broken_links([bad])
        if len(caught) != 2:
            print(f"docs: the link check missed a broken link: {caught}")
            return 1
    paths = [os.path.join(root, "README.md")] + sorted(glob.glob(os.path.join(root, "docs", "*.md")))
    problems = broken_links(paths)
    for p in problems:
        print(f"docs: {p}")
    print(f"docs: {len(paths)} documents, {len(problems)} broken links")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
