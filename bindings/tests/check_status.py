#!/usr/bin/env python3
"""Every status the bindings get from libm2mpsk is checked.

In m2mpsk/m2mpsk.h every function returning int returns a status (or, for
the peer_id_is_credential() accessors, 1/0 or a negative status). This
check reads the SWIG interface files and fails on:

 - a call of such a function whose result is not either assigned to a
   variable (`rc = m2mpsk_x(...)`) or passed straight to m2mpsk_swig_fail(),
   which records any negative status for %exception to raise: a result
   used in an expression (`m2mpsk_x(...) == 1`), returned, or dropped;
 - such a function exposed to the languages as it is (a %rename of the
   header's name), whose status %exception would never see;
 - a variable assigned a status that is never passed to m2mpsk_swig_fail()
   afterwards (a caller may test it for E_AGAIN first, but every other
   status must reach m2mpsk_swig_fail()).

The compiler checks the rest: the wrappers are built with
-Werror=unused-result, for the functions the header marks
M2MPSK_MUST_CHECK.

usage: check_status.py <m2mpsk.h> <interface file>...
"""
import re
import sys


def strip_comments(text):
    """The text with C comments blanked out, line numbers kept."""
    def blank(m):
        return re.sub(r"[^\n]", " ", m.group(0))
    return re.sub(r"/\*.*?\*/|//[^\n]*", blank, text, flags=re.S)


# int functions that answer a question with 1 or 0 and never fail (the
# header says so; tests/abi/check_contracts.py lists them too).
NOT_STATUS = {"m2mpsk_engine_available"}


def status_functions(header):
    with open(header) as f:
        text = strip_comments(f.read())
    found = set(re.findall(r"\bM2MPSK_API\s+int\s+(m2mpsk_\w+)\s*\(", text))
    return found - NOT_STATUS


def call_end(text, open_paren):
    """The index just past the parenthesis matching text[open_paren]."""
    depth = 0
    for i in range(open_paren, len(text)):
        if text[i] == "(":
            depth += 1
        elif text[i] == ")":
            depth -= 1
            if depth == 0:
                return i + 1
    return len(text)


def check_file(path, statuses):
    with open(path) as f:
        raw = f.read()
    text = strip_comments(raw)
    problems = []

    def where(i):
        return "%s:%d" % (path, text.count("\n", 0, i) + 1)

    for m in re.finditer(r"%rename\s*\(([^)]*)\)\s*(m2mpsk_\w+)\s*;", text):
        if m.group(2) in statuses:
            problems.append("%s: %s is exposed as it is; its status would not raise"
                            % (where(m.start()), m.group(2)))

    for m in re.finditer(r"\b(m2mpsk_\w+)\s*\(", text):
        name = m.group(1)
        if name not in statuses:
            continue
        before = text[:m.start()].rstrip()
        after = text[call_end(text, m.end() - 1):].lstrip()
        assigned = re.search(r"(?<![=!<>])=\s*$", before) and after.startswith(";")
        failed = re.search(r"\bm2mpsk_swig_fail\s*\(\s*$", before) and after.startswith(",")
        if not (assigned or failed):
            problems.append("%s: the status of %s is not checked" % (where(m.start()), name))
            continue
        if assigned:
            var = re.search(r"(\w+)\s*=\s*$", before)
            if var is None:
                problems.append("%s: the status of %s goes to an expression"
                                % (where(m.start()), name))
                continue
            # The rest of the function: up to the next line that closes a
            # top-level block of the interface (a method's end).
            rest = text[m.end():]
            end = re.search(r"\n  \}", rest)
            body = rest[:end.start()] if end else rest
            v = re.escape(var.group(1))
            if not re.search(r"\bm2mpsk_swig_fail\s*\(\s*%s\b" % v, body):
                problems.append("%s: %s = %s(...) is never checked"
                                % (where(m.start()), var.group(1), name))
    return problems


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    statuses = status_functions(sys.argv[1])
    if len(statuses) < 40:
        sys.exit("found only %d status functions in %s" % (len(statuses), sys.argv[1]))
    problems = []
    calls = 0
    for path in sys.argv[2:]:
        problems += check_file(path, statuses)
        calls += sum(len(re.findall(r"\b%s\s*\(" % n, strip_comments(open(path).read())))
                     for n in statuses)
    for p in problems:
        print(p)
    if problems:
        sys.exit("%d unchecked status(es)" % len(problems))
    print("%d calls of %d status functions, all checked" % (calls, len(statuses)))


if __name__ == "__main__":
    main()
