#!/bin/sh
# Builds and tests maven-consumer/ (a project depending on
# org.m2mpsk:m2mpsk:VERSION) with mvn -o, in WORK, resolving from
# LOCAL_REPO first and then from the Maven repository on disk
# $M2MPSK_MAVEN_SYSTEM_REPO (default: Debian's /usr/share/maven-repo).
# Checks that its three JUnit tests ran and passed, and that a version
# absent from both repositories fails offline.
#
#   sh maven-consumer.sh WORK LOCAL_REPO VERSION [JNI_DIR]
#
# JNI_DIR: where libm2mpskjni.so is (the build tree); without it the JVM's
# default library path (Debian: /usr/lib/<multiarch>/jni). Used by ctest
# java_maven_offline and packaging/test-install.sh.
set -eu
work=$1 local_repo=$2 version=$3 jni=${4:-}
here=$(cd "$(dirname "$0")" && pwd)
mvn=${MVN:-mvn}
system_repo=${M2MPSK_MAVEN_SYSTEM_REPO:-/usr/share/maven-repo}

rm -rf "$work"
mkdir -p "$work"
cp -r "$here/maven-consumer" "$work/project"
set -- -o -B -q -s "$here/maven-settings.xml" -Daether.offline.protocols=file \
  "-Dm2mpsk.maven.system.repo=file://$system_repo" \
  "-Dmaven.repo.local=$local_repo" -f "$work/project/pom.xml"
[ -n "$jni" ] && set -- "$@" "-DargLine=-Djava.library.path=$jni"

echo "mvn -o package, org.m2mpsk:m2mpsk:$version"
timeout 300 "$mvn" "$@" "-Dm2mpsk.version=$version" package
report=$work/project/target/surefire-reports/TEST-consumer.HandshakeTest.xml
[ -f "$report" ] || { echo "FAIL: no JUnit report ($report)"; exit 1; }
counts=$(sed -n 's/.*<testsuite[^>]* tests="\([0-9]*\)"[^>]* errors="\([0-9]*\)"[^>]* skipped="\([0-9]*\)"[^>]* failures="\([0-9]*\)".*/\1 \2 \3 \4/p' "$report")
echo "HandshakeTest: tests, errors, skipped, failures: $counts"
[ "$counts" = "3 0 0 0" ] || { echo "FAIL: expected 3 tests, all passed"; exit 1; }
jar=$local_repo/org/m2mpsk/m2mpsk/$version/m2mpsk-$version.jar
[ -f "$jar" ] || { echo "FAIL: $jar is not where Maven resolved it"; exit 1; }
echo "resolved: $jar"

echo "mvn -o package, org.m2mpsk:m2mpsk:0.0.0-absent (must fail)"
if timeout 300 "$mvn" "$@" -Dm2mpsk.version=0.0.0-absent package >"$work/absent.log" 2>&1; then
  echo "FAIL: built with a version no repository holds"
  exit 1
fi
grep -q 'org.m2mpsk:m2mpsk:jar:0.0.0-absent' "$work/absent.log" ||
  { cat "$work/absent.log"; echo "FAIL: failed for another reason"; exit 1; }
echo "refused: $(grep -m1 -o 'Could not resolve dependencies.*0.0.0-absent[^:]*' "$work/absent.log" || true)"
