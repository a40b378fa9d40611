#!/bin/sh
# ctest go_consumer: a module outside this one uses m2mpsk.org/m2mpsk
# through a replace directive, offline, as docs/go.md tells users to, and
# serves and calls HTTP over TLS-PSK with the doc's lines.
# usage: consumer.sh SRCDIR MODULEDIR  (with the go environment set)
set -eu
src=$1 mod=$2
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cp "$src/main.go" "$src/go.mod" "$work/"
echo "replace m2mpsk.org/m2mpsk => $mod" >> "$work/go.mod"
keys=$work/keys
umask 077
printf 'kpsa-id=test@onem2m.com kpsa=hex:%s idb=/cse-1 ida=/cse-a\n' \
  5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a > "$keys"
cd "$work"
out=$(go run . "$keys")
echo "$out"
expected='200 hello /cse-a
403 4106'
if [ "$out" != "$expected" ]; then
  echo "want:"; echo "$expected"
  exit 1
fi
