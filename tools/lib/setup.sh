# Shared by tools/check and tools/run: install what is missing, then build.
# Sourced, not run; expects to be at the repository root.

chorus_install_missing_packages() {
  local pkg wanted=() missing=()
  mapfile -t wanted < <(grep -v '^\s*#' tools/packages | grep -v '^\s*$')
  for pkg in "${wanted[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed'; then
      missing+=("$pkg")
    fi
  done
  if [ ${#missing[@]} -eq 0 ]; then
    echo "setup: all ${#wanted[@]} packages present" >&2
    return 0
  fi
  echo "setup: installing missing packages: ${missing[*]}" >&2
  local sudo=()
  if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null; then sudo=(sudo); else
      echo "setup: not root and no sudo; install these yourself: ${missing[*]}" >&2
      return 1
    fi
  fi
  "${sudo[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq \
    --no-install-recommends "${missing[@]}" >&2
}

# chorus_configure DIR [meson options...]: configure DIR once (options only
# count the first time; wipe DIR to change them).
chorus_configure() {
  local dir=$1; shift
  if [ ! -f "$dir/build.ninja" ]; then
    meson setup "$dir" "$@" >&2
  fi
}

# chorus_build DIR [meson options...]: configure DIR once, then build.
chorus_build() {
  chorus_configure "$@"
  ninja -C "$1" >&2
}

# The npm packages tests use, installed once into a cache directory (not
# the repository): @redocly/cli, the OpenAPI linter of test/api/openapi-lint.sh.
# 1.x runs on Debian bookworm's nodejs 18 (2.x wants node 20.19+).
CHORUS_REDOCLY_VERSION=1.34.20
chorus_npm_dir() { echo "${CHORUS_NPM_DIR:-$HOME/.cache/chorus/npm}"; }

# chorus_install_redocly: installs @redocly/cli into $(chorus_npm_dir) unless
# that version is there; installs Debian's npm first if there is no npm.
# Returns non-zero (with a message) when it cannot: the lint test then
# skips itself saying why.
chorus_install_redocly() {
  local dir bin
  dir=$(chorus_npm_dir)
  bin="$dir/node_modules/.bin/redocly"
  if [ -x "$bin" ] && [ "$("$bin" --version 2>/dev/null)" = "$CHORUS_REDOCLY_VERSION" ]; then
    echo "setup: @redocly/cli $CHORUS_REDOCLY_VERSION present in $dir" >&2
    return 0
  fi
  if ! command -v npm >/dev/null; then
    echo "setup: installing npm (for @redocly/cli)" >&2
    local sudo=()
    [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null && sudo=(sudo)
    "${sudo[@]}" apt-get update -qq &&
      DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends \
        npm >&2 || { echo "setup: could not install npm" >&2; return 1; }
  fi
  echo "setup: installing @redocly/cli $CHORUS_REDOCLY_VERSION into $dir" >&2
  mkdir -p "$dir" &&
    timeout 600 npm install --prefix "$dir" --no-audit --no-fund --loglevel=error \
      "@redocly/cli@$CHORUS_REDOCLY_VERSION" >&2 ||
    { echo "setup: could not install @redocly/cli from the npm registry" >&2; return 1; }
}

# chorus_install_npm_packages: the npm packages of tools/npm-packages that
# are missing from $(chorus_npm_dir) (exported as CHORUS_NPM_DIR for the
# tests), installed with npm; installs Debian's npm first if there is no
# npm. Never fatal: without the registry the tests that need a
# package skip. Exports CHORUS_REQUIRE_BROWSER=1 once puppeteer-core and a
# Chromium are both there, so the browser test fails instead of skipping.
chorus_install_npm_packages() {
  CHORUS_NPM_DIR=$(chorus_npm_dir)
  export CHORUS_NPM_DIR
  local spec name version have missing=()
  while read -r spec; do
    name=${spec%@*}
    version=${spec##*@}
    have=$(node -p "require('$CHORUS_NPM_DIR/node_modules/$name/package.json').version" 2>/dev/null || true)
    [ "$have" = "$version" ] || missing+=("$spec")
  done < <(grep -v '^\s*#' tools/npm-packages | grep -v '^\s*$')
  if [ ${#missing[@]} -gt 0 ]; then
    if ! command -v npm >/dev/null; then
      local sudo=()
      [ "$(id -u)" -eq 0 ] || sudo=(sudo)
      "${sudo[@]}" apt-get update -qq &&
        DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends \
          npm >&2 || true
    fi
    echo "setup: installing npm packages into $CHORUS_NPM_DIR: ${missing[*]}" >&2
    mkdir -p "$CHORUS_NPM_DIR"
    if ! timeout 600 npm install --prefix "$CHORUS_NPM_DIR" --no-audit --no-fund --loglevel=error \
        "${missing[@]}" >&2; then
      echo "setup: npm could not install ${missing[*]}; the tests that need them skip" >&2
      return 0
    fi
  else
    echo "setup: npm packages present in $CHORUS_NPM_DIR" >&2
  fi
  if [ -d "$CHORUS_NPM_DIR/node_modules/puppeteer-core" ] &&
     command -v chromium >/dev/null; then
    export CHORUS_REQUIRE_BROWSER=1
  fi
}
