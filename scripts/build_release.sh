#!/usr/bin/env bash
# Build the stripped release binaries (`cargo build --profile dist`) and print their sizes.
#
#   scripts/build_release.sh            x86_64-unknown-linux-gnu and aarch64-unknown-linux-gnu,
#                                       baseline features only (the shipped binaries: runtime
#                                       dispatch picks the SIMD kernels)
#   scripts/build_release.sh PROFILE    one opt-in device build from targets/PROFILE.env
#                                       (rpi5, jetson-orin, x86_64-v3, ...), in its own target
#                                       dir so it never invalidates the baseline build
#
# Binaries are copied to target/bin/edge-sft-<triple>[-<profile>]. Installs the aarch64 cross
# toolchain (apt, rustup) when it is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
. targets/cross-env.sh

mkdir -p target/bin
built=()

# build TRIPLE [PROFILE_NAME RUSTFLAGS FEATURES]
build() {
    local triple=$1 name=${2:-} flags=${3:-} features=${4:-} out
    local args=(build --locked --profile dist --bin edge-sft --target "$triple")
    [ -z "$features" ] || args+=(--features "$features")
    case $triple in
        aarch64-unknown-linux-gnu) edge_cross_setup_aarch64 build ;;
        aarch64-linux-android)
            edge_rustup_targets aarch64-linux-android
            if [ -z "${CARGO_TARGET_AARCH64_LINUX_ANDROID_LINKER:-}" ]; then
                echo "error: linking for Android needs the NDK: set CARGO_TARGET_AARCH64_LINUX_ANDROID_LINKER," >&2
                echo "  CC_aarch64_linux_android and AR_aarch64_linux_android (see docs/arm.md)" >&2
                exit 1
            fi
            ;;
    esac
    out="target/bin/edge-sft-$triple"
    if [ -n "$name" ]; then
        args+=(--target-dir "target/profile-$name")
        out="$out-$name"
        echo "+ RUSTFLAGS='$flags' cargo ${args[*]}" >&2
        RUSTFLAGS="$flags" cargo "${args[@]}"
        cp "target/profile-$name/$triple/dist/edge-sft" "$out"
    else
        echo "+ cargo ${args[*]}" >&2
        cargo "${args[@]}"
        cp "target/$triple/dist/edge-sft" "$out"
    fi
    built+=("$out")
}

start=$SECONDS
if [ $# -eq 0 ]; then
    build x86_64-unknown-linux-gnu
    build aarch64-unknown-linux-gnu
elif [ $# -eq 1 ] && [ "$1" != -h ] && [ "$1" != --help ]; then
    edge_load_profile "$1"
    build "$PROFILE_TARGET" "$PROFILE_NAME" "$PROFILE_RUSTFLAGS" "${PROFILE_FEATURES:-}"
else
    sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
fi

echo
echo "built in $((SECONDS - start)) s:"
for f in "${built[@]}"; do
    bytes=$(stat -c %s "$f")
    printf '  %-48s %10d bytes  %6.2f MB  (%s)\n' "$f" "$bytes" \
        "$(awk -v b="$bytes" 'BEGIN { print b / 1e6 }')" "$(file -b "$f" | cut -d, -f1-2)"
done
