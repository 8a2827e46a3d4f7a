#!/bin/sh
# capnp-compat.sh DIR: copies Cap'n Proto's headers to DIR/capnp with the two
# comparisons of capnp/blob.h that clang 16 rejects in C++20 rewritten (clang
# 16 applies P2468: a `const char* != kj::StringPtr` no longer finds a
# rewritten operator== when StringPtr declares operator!=; fixed in capnp
# 1.0). Used by -Dfuzz=true builds only (meson.build puts DIR first on the
# include path); the headers are otherwise unchanged.
set -eu
src=/usr/include/capnp
dst=$1/capnp
rm -rf "$dst.tmp"
mkdir -p "$1"
cp -r "$src" "$dst.tmp"
sed -i 's/return a == b\.asString();/return b.asString() == a;/;
        s/return a != b\.asString();/return !(b.asString() == a);/' "$dst.tmp/blob.h"
if grep -q 'return a [!=]= b\.asString();' "$dst.tmp/blob.h"; then
  echo "capnp-compat: could not patch $dst.tmp/blob.h" >&2
  exit 1
fi
rm -rf "$dst"
mv "$dst.tmp" "$dst"
