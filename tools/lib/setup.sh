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
