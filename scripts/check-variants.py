#!/usr/bin/env python3
"""No broken variant in a shipped binary. The test-only feature
`test-variants` of the paycache crate (the alternative designs the tests
prove the real one against, and their fault hooks) and of the local
gateway (its management API without the signature check) must be off in
every build a function or tool ships from: each function as `sam build` and `cargo lambda watch`
build it (`-p <function>`, normal dependencies: a release build resolves
the same features), the development tools, and the whole workspace's
binaries as `make run` builds them (`cargo build --bins`, no
dev-dependencies). Read with `cargo tree -e features`, which is what cargo
compiles.

First it must catch a planted one: the test crate, with its
dev-dependencies, is where the feature is on, and the same check must
report it (--self-test runs only that).

Usage: check-variants.py [--self-test]"""
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The crates with broken variants, and the feature that compiles them.
CRATES = ("paycache", "paycache-ws-gateway")
FEATURE = "test-variants"


def tree(selection, edges, crate):
    out = subprocess.run(["cargo", "tree", *selection, "-e", edges, "-i", crate, "--offline"],
                         capture_output=True, text=True, cwd=ROOT)
    if out.returncode != 0 and "did not match any packages" in out.stderr:
        return ""  # the crate is not in this build at all
    if out.returncode != 0:
        raise SystemExit(f"cargo tree {' '.join(selection)} failed: {out.stderr.strip()[-400:]}")
    return out.stdout


def enabled(selection, edges="normal,build,features"):
    """The crates whose broken variants this build compiles."""
    return [crate for crate in CRATES
            if f'{crate} feature "{FEATURE}"' in tree(selection, edges, crate)]


def packages():
    meta = json.loads(subprocess.run(["cargo", "metadata", "--no-deps", "--format-version", "1", "--offline"],
                                     capture_output=True, text=True, cwd=ROOT, check=True).stdout)
    shipped = []
    for p in meta["packages"]:
        path = os.path.relpath(os.path.dirname(p["manifest_path"]), ROOT)
        if path.startswith("functions" + os.sep) or p["name"] in ("paycache-dev", "paycache-ws-gateway"):
            shipped.append(p["name"])
    return sorted(shipped)


def self_test():
    caught = enabled(["-p", "paycache-tests"], "normal,build,dev,features")
    if sorted(caught) != sorted(CRATES):
        raise SystemExit("check-variants: the planted case (the test crate's dev-dependencies) was not caught "
                         f"for every crate: caught {caught} of {list(CRATES)}")
    print(f"check-variants: a build with the test crate's dev-dependencies is caught ({', '.join(caught)})", flush=True)


def main():
    self_test()
    if "--self-test" in sys.argv[1:]:
        return
    shipped = packages()
    if len(shipped) < 13:
        raise SystemExit(f"check-variants: found only {shipped}: the function crates moved?")
    bad = [f"{name} ({', '.join(crates)})" for name in shipped if (crates := enabled(["-p", name]))]
    if crates := enabled(["--workspace"]):
        bad.append(f"cargo build --workspace --bins, make run ({', '.join(crates)})")
    if bad:
        raise SystemExit(f"check-variants: the test-only feature `{FEATURE}` is on in: " + ", ".join(bad))
    print(f"check-variants: no broken variant in {len(shipped)} shipped packages or make run's build", flush=True)


if __name__ == "__main__":
    main()
