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

# chorus_install_npm_packages: the npm packages of tools/npm-packages that
# are missing from $CHORUS_NPM_DIR (default ~/.cache/chorus/npm; exported
# for the tests), installed with npm; installs Debian's npm first if there
# is no npm. Never fatal: without the registry the tests that need a
# package skip. Exports CHORUS_REQUIRE_BROWSER=1 once puppeteer-core and a
# Chromium are both there, so the browser test fails instead of skipping.
chorus_install_npm_packages() {
  export CHORUS_NPM_DIR=${CHORUS_NPM_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/chorus/npm}
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
      DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends npm >&2 || true
    fi
    echo "setup: installing npm packages into $CHORUS_NPM_DIR: ${missing[*]}" >&2
    mkdir -p "$CHORUS_NPM_DIR"
    if ! npm install --prefix "$CHORUS_NPM_DIR" --no-audit --no-fund --loglevel=error \
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
