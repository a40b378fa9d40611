#!/usr/bin/env python3
"""Checks the contracts the public header promises for every function.

Usage: check_contracts.py HEADER
Fails, naming each function at fault, when a public function's doc comment
has no "Thread safety:" statement, or when a function that returns an int
status (which can fail) is not declared M2MPSK_MUST_CHECK and is not on the
allow-list below.
"""
import re
import sys

# int-returning functions whose result is not a status that can fail, so
# that the compiler need not insist the caller looks at it. Each entry says
# why. (void functions, such as every _free, and functions returning a
# string, a size or an enum, are not status returns and need no entry.)
ALLOW_UNCHECKED = {
    # 1 or 0: a property of the binding, 0 also for NULL; never a status.
    "m2mpsk_assoc_peer_id_is_credential":
        "returns 1 or 0, never a status",
    "m2mpsk_event_peer_id_is_credential":
        "returns 1 or 0, never a status",
    # 1 or 0: whether an engine can be loaded, a question, never a status.
    "m2mpsk_engine_available":
        "returns 1 or 0, never a status",
}

THREAD = "Thread safety:"


def declarations(text):
    """Yields (name, return type, attributes, doc comment) per function."""
    # Everything before each declaration up to the previous one: the doc
    # comment, if any, is the last /** ... */ block of that stretch with
    # nothing but blank space after it.
    pos = 0
    pattern = re.compile(
        r"M2MPSK_API\s+([^;(]*?)\b(m2mpsk_\w+)\s*\(([^;]*?)\)\s*([^;]*);",
        re.S)
    for m in pattern.finditer(text):
        before = text[pos:m.start()]
        pos = m.end()
        doc = None
        cm = re.search(r"/\*\*((?:(?!\*/).)*)\*/\s*$", before, re.S)
        if cm:
            doc = cm.group(1)
        yield m.group(2), " ".join(m.group(1).split()), m.group(4), doc


def main():
    with open(sys.argv[1]) as f:
        text = f.read()
    problems = []
    count = 0
    for name, ret, attrs, doc in declarations(text):
        count += 1
        if doc is None:
            problems.append("%s has no doc comment" % name)
        elif THREAD not in " ".join(doc.replace("*", " ").split()):
            problems.append("%s: its doc comment has no '%s' statement"
                            % (name, THREAD))
        if ret == "int" and "M2MPSK_MUST_CHECK" not in attrs and \
                name not in ALLOW_UNCHECKED:
            problems.append("%s returns an int status but is not "
                            "M2MPSK_MUST_CHECK (nor on the allow-list)" % name)
        if name in ALLOW_UNCHECKED and "M2MPSK_MUST_CHECK" in attrs:
            problems.append("%s is on the allow-list but is MUST_CHECK: "
                            "drop it from the list" % name)
    for name in ALLOW_UNCHECKED:
        if not re.search(r"\b%s\s*\(" % name, text):
            problems.append("allow-list names %s, which the header does not "
                            "declare" % name)
    for p in problems:
        print("FAIL " + p)
    print("%d functions checked; %d problems" % (count, len(problems)))
    return 1 if problems or count == 0 else 0


if __name__ == "__main__":
    sys.exit(main())
