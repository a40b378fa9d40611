#!/bin/sh
# ctest java_old_package: code written for 0.2's package m2mpsk compiles
# against the deprecated alias, with deprecation warnings, and runs.
# Usage: old_package.sh JAVAC JAVA JAR LIBDIR SOURCE WORKDIR
set -eu
javac=$1 java=$2 jar=$3 libdir=$4 src=$5 work=$6
rm -rf "$work"
mkdir -p "$work"
"$javac" -Xlint:deprecation -encoding UTF-8 -cp "$jar" -d "$work" "$src" >"$work/javac.log" 2>&1 || {
  cat "$work/javac.log"
  echo "FAIL: 0.2 code no longer compiles against the alias"
  exit 1
}
cat "$work/javac.log"
grep -q "m2mpsk.* has been deprecated" "$work/javac.log" || {
  echo "FAIL: no deprecation warning for the package m2mpsk"
  exit 1
}
out=$("$java" -Djava.library.path="$libdir" -cp "$jar:$work" OldPackage)
echo "$out"
[ "$out" = ok ] || { echo "FAIL: OldPackage did not print ok"; exit 1; }
