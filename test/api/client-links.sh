#!/bin/sh
# The `chorus` CLI is a client only: it must link neither LMDB nor libuv,
# nor carry the store, the cluster or the replication core (issue 16: the
# api library's client half, api_client_dep). Fails, naming what crept in,
# if someone links the server library into it again.
# Usage: client-links.sh PATH/TO/chorus
set -u
bin=${1:?usage: client-links.sh PATH/TO/chorus}
[ -x "$bin" ] || { echo "not an executable: $bin"; exit 1; }
status=0

libs=$(ldd "$bin") || { echo "ldd $bin failed"; exit 1; }
for lib in liblmdb libuv; do
  if printf '%s\n' "$libs" | grep -q "$lib"; then
    echo "FAIL: $bin depends on $lib:"
    printf '%s\n' "$libs" | grep "$lib"
    status=1
  fi
done

undefined=$(nm -D --undefined-only "$bin") || { echo "nm -D $bin failed"; exit 1; }
if printf '%s\n' "$undefined" | grep -Eq '^ *U (mdb_|uv_)'; then
  echo "FAIL: $bin needs LMDB or libuv symbols:"
  printf '%s\n' "$undefined" | grep -E '^ *U (mdb_|uv_)' | head -5
  status=1
fi

defined=$(nm -C --defined-only "$bin") || { echo "nm $bin failed"; exit 1; }
server='chorus::storage::Store::|chorus::gossip::Cluster::|chorus::gossip::ReplicationCore::|chorus::Node::'
if printf '%s\n' "$defined" | grep -Eq "$server"; then
  echo "FAIL: $bin carries server code (store, cluster, replication core or Node):"
  printf '%s\n' "$defined" | grep -E "$server" | head -5
  status=1
fi

[ "$status" -eq 0 ] && echo "ok: $bin links neither LMDB nor libuv and carries no server code"
exit "$status"
