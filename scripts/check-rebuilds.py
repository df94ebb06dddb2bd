#!/usr/bin/env python3
"""Reads cargo's JSON messages (`cargo build --message-format=json`) on stdin
and fails if the build compiled a dependency that is not a workspace crate.

`make test` builds the tests first (`cargo test --workspace`); every later
build — `cargo run -p paycache-dev`, `cargo lambda watch`'s `cargo run --bin
<function>` — must find the dependencies it needs already compiled, with the
same features (the workspace-hack crate, shared/workspace-hack). A dependency
compiled again means the workspace-hack crate is out of date: run `cargo
hakari generate` (docs/operations.md → Build time).

Usage: cargo build … --message-format=json | check-rebuilds.py WHAT
       check-rebuilds.py --self-test
"""
import json
import sys


def rebuilt_dependencies(lines):
    """Package ids of the non-workspace crates the build compiled (not fresh)."""
    out, artifacts = [], 0
    for line in lines:
        line = line.strip()
        if not line.startswith("{"):
            continue
        try:
            msg = json.loads(line)
        except ValueError:
            continue
        if msg.get("reason") != "compiler-artifact":
            continue
        artifacts += 1
        pkg = msg.get("package_id", "")
        # Workspace crates are path dependencies; everything from a registry
        # or git is a dependency.
        if not msg.get("fresh", True) and not pkg.startswith("path+file://"):
            out.append(pkg)
    return out, artifacts


def self_test():
    fresh = json.dumps({"reason": "compiler-artifact", "fresh": True,
                        "package_id": "registry+https://github.com/rust-lang/crates.io-index#tokio@1.48.0"})
    ours = json.dumps({"reason": "compiler-artifact", "fresh": False,
                       "package_id": "path+file:///src/functions/profile-read#0.1.0"})
    again = json.dumps({"reason": "compiler-artifact", "fresh": False,
                        "package_id": "registry+https://github.com/rust-lang/crates.io-index#hyper@1.7.0"})
    assert rebuilt_dependencies([fresh, ours]) == ([], 2)
    # The planted rebuild of a dependency must be caught.
    assert rebuilt_dependencies([fresh, again, ours])[0] == [
        "registry+https://github.com/rust-lang/crates.io-index#hyper@1.7.0"]


def main():
    if sys.argv[1:] == ["--self-test"]:
        self_test()
        return 0
    what = " ".join(sys.argv[1:]) or "the build"
    rebuilt, artifacts = rebuilt_dependencies(sys.stdin)
    if artifacts == 0:
        # No message at all: cargo failed or the pipe carried nothing.
        print(f"error: {what}: no cargo build messages were read", file=sys.stderr)
        return 1
    if rebuilt:
        print(f"error: {what} compiled {len(rebuilt)} dependencies again, with other "
              "features than the test build; the workspace-hack crate is out of date: "
              "run `cargo hakari generate` (cargo install cargo-hakari --locked)",
              file=sys.stderr)
        for pkg in rebuilt[:20]:
            print(f"  {pkg}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
