# shellcheck shell=bash
# Sourced by scripts/build_release.sh and scripts/ci_arm.sh: installs the cross toolchain if it
# is missing (idempotent: checks first, runs `apt-get update` at most once) and exports the
# cargo/cc environment for aarch64 cross builds and qemu runs. Host (x86_64) builds are not
# affected: every variable here is specific to an aarch64 target triple or to qemu.

# Run a command as root (directly, or via sudo when not root).
_edge_as_root() {
    if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
        echo "error: need root to run: $*" >&2
        return 1
    fi
}

_EDGE_APT_UPDATED=0
# Install the Debian packages given as arguments, skipping those already installed.
edge_apt_install() {
    local missing=() p
    for p in "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    if ! command -v apt-get >/dev/null; then
        echo "error: missing packages ${missing[*]} and no apt-get to install them" >&2
        return 1
    fi
    echo "+ apt-get install ${missing[*]}" >&2
    if [ "$_EDGE_APT_UPDATED" = 0 ]; then
        _edge_as_root apt-get update -qq
        _EDGE_APT_UPDATED=1
    fi
    _edge_as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
}

# Add the rustup targets given as arguments, skipping those already installed.
edge_rustup_targets() {
    local t installed
    if ! command -v rustup >/dev/null; then
        # Debian's rustc-web + libstd-rust-web-dev:arm64 is the fallback when there is no rustup.
        for t in "$@"; do
            [ -d "$(rustc --print sysroot)/lib/rustlib/$t" ] || {
                echo "error: no rustup, and the Rust std for $t is not installed" >&2
                return 1
            }
        done
        return 0
    fi
    installed=$(rustup target list --installed)
    for t in "$@"; do
        grep -qx "$t" <<<"$installed" || rustup target add "$t"
    done
}

# Toolchain for aarch64-unknown-linux-gnu (cross gcc for linking and for onig's C code, the
# arm64 glibc for qemu). `edge_cross_setup_aarch64 qemu` also installs qemu-user; `build`: not.
edge_cross_setup_aarch64() {
    local pkgs=(gcc-aarch64-linux-gnu g++-aarch64-linux-gnu libc6-dev-arm64-cross)
    [ "${1:-}" = qemu ] && pkgs+=(qemu-user)
    edge_apt_install "${pkgs[@]}"
    edge_rustup_targets aarch64-unknown-linux-gnu
    export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
    export CC_aarch64_unknown_linux_gnu=aarch64-linux-gnu-gcc
    export CXX_aarch64_unknown_linux_gnu=aarch64-linux-gnu-g++
    export AR_aarch64_unknown_linux_gnu=aarch64-linux-gnu-ar
    # qemu-aarch64 finds the arm64 dynamic loader and libc here (same as `-L`).
    export QEMU_LD_PREFIX=/usr/aarch64-linux-gnu
}

# `cargo check` for Android needs no linker, but onig_sys's build script still compiles its C
# sources. Without the NDK we let the aarch64 Linux gcc compile them: the objects are never
# linked, so only the Rust side is really being checked. With the NDK, set CC/AR yourself.
edge_cross_setup_android_check() {
    edge_apt_install gcc-aarch64-linux-gnu
    edge_rustup_targets aarch64-linux-android
    export CC_aarch64_linux_android="${CC_aarch64_linux_android:-aarch64-linux-gnu-gcc}"
    export AR_aarch64_linux_android="${AR_aarch64_linux_android:-aarch64-linux-gnu-ar}"
}

# Read a targets/*.env profile (NAME or path) into PROFILE_NAME, PROFILE_TARGET,
# PROFILE_RUSTFLAGS, PROFILE_QEMU_CPU.
edge_load_profile() {
    local f=$1 dir
    dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
    [ -f "$f" ] || f="$dir/$1.env"
    if [ ! -f "$f" ]; then
        local have=() g
        for g in "$dir"/*.env; do have+=("$(basename "$g" .env)"); done
        echo "error: no profile '$1' (have: ${have[*]})" >&2
        return 1
    fi
    # shellcheck disable=SC2034  # outputs, read by the caller
    PROFILE_TARGET="" PROFILE_RUSTFLAGS="" PROFILE_QEMU_CPU=""
    # shellcheck disable=SC1090
    . "$f"
    # shellcheck disable=SC2034
    PROFILE_NAME="$(basename "$f" .env)"
    [ -n "$PROFILE_TARGET" ] || { echo "error: $f sets no PROFILE_TARGET" >&2; return 1; }
}
