#!/usr/bin/env bash
# Builds libichseg.so and tests/c/test_capi.c and runs the C ABI test under valgrind's memcheck.
#
#     tests/c/run_valgrind.sh            # from anywhere; uses the dev profile
#     PROFILE=release tests/c/run_valgrind.sh
#
# Fails on any memory error (invalid read/write, use of uninitialised values, bad free) and on
# any "definitely lost" block (--errors-for-leak-kinds=definite). Blocks "still reachable" or "possibly lost" at
# exit are shown but do not fail the run, and nothing is suppressed. What they are (checked
# with --show-leak-kinds=all):
# - still reachable (~49 kB): tract-linalg's kernel tables, built once per process in
#   lazy_static/Once globals the first time a plan is optimised, plus Rust runtime globals;
# - possibly lost (~2.3 kB): an engine's rayon workers are detached threads; freeing the
#   engine and its models tells them to stop but does not join them, so a worker may still be
#   alive when main() returns, holding its crossbeam-epoch registration, which valgrind sees
#   only through an interior pointer.
# Neither grows with the number of calls or handles. A leak of libichseg's own handles, results
# or error messages would be "definitely lost" and fail this script.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$root"
profile="${PROFILE:-debug}"

if ! command -v valgrind >/dev/null 2>&1; then
    echo "run_valgrind.sh: valgrind is not installed (apt-get install valgrind)" >&2
    exit 1
fi
if ! command -v cc >/dev/null 2>&1; then
    echo "run_valgrind.sh: no C compiler cc (apt-get install gcc)" >&2
    exit 1
fi

# `cargo test --no-run` builds the cdylib into target/<profile>/deps with the same features as
# the test run before it, so nothing is rebuilt; `cargo build --lib` would (no dev-dependencies,
# different feature unification) and recompile tract.
if [ "$profile" = release ]; then
    cargo test --release --no-run --test c_abi
    libdir="${CARGO_TARGET_DIR:-$root/target}/release/deps"
else
    cargo test --no-run --test c_abi
    libdir="${CARGO_TARGET_DIR:-$root/target}/debug/deps"
fi
[ -f "$libdir/libichseg.so" ] || { echo "run_valgrind.sh: $libdir/libichseg.so was not built" >&2; exit 1; }

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
# The library asks to be loaded by its SONAME (build.rs): link it under that name, as an install does.
soname=$(objdump -p "$libdir/libichseg.so" | awk '$1 == "SONAME" {print $2}')
ln -s "$libdir/libichseg.so" "$tmp/libichseg.so"
[ -z "$soname" ] || ln -s "$libdir/libichseg.so" "$tmp/$soname"
libdir="$tmp"
# Same flags as tests/c_abi.rs.
cc -std=c99 -Wall -Wextra -Wpedantic -Werror -g -O1 -pthread -I include tests/c/test_capi.c \
    -o "$tmp/test_capi" -L"$libdir" -Wl,-rpath,"$libdir" -lichseg -lm
gzip -dc tests/fixtures/unet/ct_small.nii.gz > "$tmp/ct_small.nii"

# Runs one compiled test program under memcheck; fails on any error or definite leak, or when
# the program does not print its completion line.
memcheck() {
    local name="$1" exe="$2" done_marker="$3" status=0
    local log="$tmp/$name.valgrind.log" out="$tmp/$name.stdout"
    valgrind --tool=memcheck --leak-check=full --show-leak-kinds=definite,possible \
        --errors-for-leak-kinds=definite --error-exitcode=1 --track-origins=yes \
        --log-file="$log" \
        "$exe" tests/fixtures/unet "$tmp/ct_small.nii" > "$out" || status=$?
    tail -n 3 "$out"
    echo "--- valgrind ($name) ---"
    sed -n '/HEAP SUMMARY/,$p' "$log"
    if [ "$status" -ne 0 ]; then
        echo "--- full valgrind log ($name) ---"
        cat "$log"
        echo "run_valgrind.sh: $name FAILED (exit status $status)" >&2
        exit "$status"
    fi
    grep -q "$done_marker" "$out" || { echo "run_valgrind.sh: the $name test ended early" >&2; exit 1; }
    echo "run_valgrind.sh: $name: no memory errors, no definite leaks"
}

memcheck C "$tmp/test_capi" "all C ABI checks passed"

# The C++17 wrapper (bindings/cpp/ichseg.hpp) through tests/cpp/test_wrapper.cpp, under the same
# memcheck settings: RAII handles, moves and exceptions (including one thrown from a progress
# callback) must not leak libichseg's handles or results.
# "still reachable" is larger here (~66 kB): the test makes more engines, and their detached
# rayon workers (see above) still hold their deques and epoch registrations at exit.
if ! command -v c++ >/dev/null 2>&1; then
    echo "run_valgrind.sh: no C++ compiler c++ (apt-get install g++)" >&2
    exit 1
fi
# Same flags as tests/cpp_wrapper.rs.
c++ -std=c++17 -Wall -Wextra -Wpedantic -Werror -g -O1 -pthread -I include -I bindings/cpp \
    tests/cpp/test_wrapper.cpp -o "$tmp/test_wrapper" -L"$libdir" -Wl,-rpath,"$libdir" -lichseg -lm
memcheck C++ "$tmp/test_wrapper" "all C++ wrapper checks passed"
