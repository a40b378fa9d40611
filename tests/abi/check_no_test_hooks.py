#!/usr/bin/env python3
"""Checks that shipped binaries carry no test-only code.

Usage: check_no_test_hooks.py SOURCE_DIR PATH...
Each PATH is a shared object (libm2mpsk.so, a backend module) or a
directory whose *.so files are all checked (lib/m2mpsk/). Every symbol nm
lists, local ones included, and every dynamic symbol is matched against:
  - the names defined inside `#ifdef M2MPSK_TEST_HOOKS` blocks of
    SOURCE_DIR/src (the keystore's hooks and the state only they use),
    which exist only in the static library the tests link;
  - name patterns for test-only code: debug_, test_hook, _for_test(s).
Fails when any matches, or when a PATH names no file to check.
"""
import os
import re
import subprocess
import sys

PATTERNS = [r"debug_", r"test_hook", r"_for_tests?\b"]


def hook_names(src_dir):
    """Names defined at file scope inside #ifdef M2MPSK_TEST_HOOKS."""
    names = set()
    define = re.compile(r"^(?!#|\s|}|/\*|\*)[\w\s\*]*?\b([A-Za-z_]\w*)\s*[\(;=\[]")
    for root, _, files in os.walk(os.path.join(src_dir, "src")):
        for f in files:
            if not f.endswith((".c", ".h")):
                continue
            # Per nesting level: whether it is (the if branch of) a hooks block.
            stack = []
            with open(os.path.join(root, f)) as fh:
                for line in fh:
                    s = line.strip()
                    if re.match(r"#\s*if", s):
                        stack.append(bool(re.match(
                            r"#\s*ifdef\s+M2MPSK_TEST_HOOKS\b|"
                            r"#\s*if\s+defined\s*\(?\s*M2MPSK_TEST_HOOKS\b", s)))
                    elif re.match(r"#\s*el", s) and stack:
                        stack[-1] = False
                    elif re.match(r"#\s*endif", s) and stack:
                        stack.pop()
                    elif any(stack):
                        m = define.match(line)
                        if m:
                            names.add(m.group(1))
    return names


def symbols(path):
    out = set()
    for args in (["nm", "--defined-only"], ["nm", "-D", "--defined-only"]):
        r = subprocess.run(args + [path], capture_output=True, text=True)
        if r.returncode != 0 and "no symbols" not in r.stderr:
            sys.exit("nm failed on %s: %s" % (path, r.stderr.strip()))
        for line in r.stdout.splitlines():
            parts = line.split()
            if len(parts) >= 3:
                out.add(parts[2].split("@")[0])
    return out


src_dir, paths = sys.argv[1], sys.argv[2:]
files = []
for p in paths:
    if os.path.isdir(p):
        found = sorted(os.path.join(p, f) for f in os.listdir(p)
                       if f.endswith(".so"))
        if not found:
            sys.exit("FAIL no shared object in %s" % p)
        files += found
    elif os.path.isfile(p):
        files.append(p)
    else:
        sys.exit("FAIL no such file: %s" % p)

hooks = hook_names(src_dir)
problems = 0
if not hooks:
    # The hooks are not fenced off: the patterns below still run.
    print("FAIL found no #ifdef M2MPSK_TEST_HOOKS definitions in %s/src"
          % src_dir)
    problems += 1
pattern = re.compile("|".join(PATTERNS))
for f in files:
    syms = symbols(f)
    bad = sorted(s for s in syms if s in hooks or pattern.search(s))
    for s in bad:
        print("FAIL %s: %s" % (f, s))
    problems += len(bad)
    print("%s: %d symbols, %d test-only" % (f, len(syms), len(bad)))
print("%d hook names known (%s); %d problems"
      % (len(hooks), ", ".join(sorted(hooks)), problems))
sys.exit(1 if problems else 0)
