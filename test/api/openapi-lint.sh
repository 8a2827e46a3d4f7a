#!/usr/bin/env bash
# Lints api/http/openapi.json with @redocly/cli (its recommended rules):
# fails on any error or warning. The linter comes from npm, installed once
# into a cache dir by tools/check (tools/lib/setup.sh); if it is not there
# this test installs it, and exits 77 (skipped), saying why, only when
# that is impossible (no npm, or the registry unreachable).
# Usage: openapi-lint.sh REPO_ROOT
set -uo pipefail
root=$1
cd "$root" || exit 1
source tools/lib/setup.sh
if ! chorus_install_redocly; then
  echo "SKIP: @redocly/cli is not installed and could not be (no npm, or the npm registry is unreachable)"
  exit 77
fi
out=$("$(chorus_npm_dir)/node_modules/.bin/redocly" lint --format=stylish api/http/openapi.json 2>&1)
code=$?
echo "$out"
if [ $code -ne 0 ]; then
  echo "FAIL: redocly lint exited $code"
  exit 1
fi
if echo "$out" | grep -qiE '[0-9]+ (problems?|warnings?|errors?)' &&
   ! echo "$out" | grep -qiE '(^|[^0-9])0 problems'; then
  echo "FAIL: the linter reported problems"
  exit 1
fi
echo "PASS: api/http/openapi.json lints clean"
