#!/usr/bin/env python3
"""Checks that the exported ABI, the version script and the header agree.

Usage: check_exports.py LIBRARY MAP HEADER
Fails when an exported symbol lacks the m2mpsk_ prefix, is missing from the
map, or carries no version node; when a map entry is not declared in the
public header or not exported; or when the header declares an M2MPSK_API
function that the map does not list.
"""
import re
import subprocess
import sys

lib, map_path, header_path = sys.argv[1:4]

nm = subprocess.run(["nm", "-D", "--defined-only", lib], check=True,
                    capture_output=True, text=True).stdout
exported = {}
for line in nm.splitlines():
    parts = line.split()
    if len(parts) != 3 or parts[1] not in "TDBRVWiu":
        continue
    name, _, version = parts[2].partition("@")
    exported[name] = version.lstrip("@")
for node_symbol in [k for k in exported if re.fullmatch(r"M2MPSK_[0-9.]+", k)]:
    exported.pop(node_symbol)  # the version nodes' own symbols

with open(map_path) as f:
    text = re.sub(r"/\*.*?\*/", "", f.read(), flags=re.S)
nodes = dict(re.findall(r"(M2MPSK_[0-9.]+)\s*\{(.*?)\}", text, flags=re.S))
in_map = {}
for node, body in nodes.items():
    glob = body.split("local:")[0]
    for name in re.findall(r"\b(m2mpsk_\w+)\s*;", glob):
        in_map[name] = node

with open(header_path) as f:
    header = f.read()
declared = set(re.findall(r"M2MPSK_API\s+[^;(]*?\b(m2mpsk_\w+)\s*\(", header))

problems = []
# The header stands alone: standard headers and our version header only, no
# public struct layouts (opaque handles), no varargs.
for inc in re.findall(r'#include\s*[<"]([^>"]+)[>"]', header):
    if inc not in ("stddef.h", "stdint.h", "m2mpsk/version.h"):
        problems.append("the header includes %s" % inc)
for m in re.finditer(r"\bstruct\s+\w+\s*\{", header):
    problems.append("the header defines a struct: %s" % m.group(0))
if "..." in re.sub(r"/\*.*?\*/", "", header, flags=re.S):
    problems.append("the header declares a varargs function")
for name, version in sorted(exported.items()):
    if not name.startswith("m2mpsk_"):
        problems.append("exported without the m2mpsk_ prefix: %s" % name)
    elif name not in in_map:
        problems.append("exported but not in the version script: %s" % name)
    elif version != in_map[name]:
        problems.append("%s has version '%s', the map says %s"
                        % (name, version, in_map[name]))
for name in sorted(in_map):
    if name not in declared:
        problems.append("in the map but not declared M2MPSK_API in the "
                        "header: %s" % name)
    if name not in exported:
        problems.append("in the map but not exported: %s" % name)
for name in sorted(declared - set(in_map)):
    problems.append("declared in the header but missing from the map: %s"
                    % name)

for p in problems:
    print("FAIL " + p)
print("%d symbols exported, %d in the map, %d declared; %d problems"
      % (len(exported), len(in_map), len(declared), len(problems)))
sys.exit(1 if problems or not exported else 0)
