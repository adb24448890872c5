#!/usr/bin/env bash
# Builds libichseg and installs it for C and C++ consumers:
#
#   scripts/install.sh [--prefix DIR] [--profile release|dist|debug] [--features LIST] [--no-build]
#
#   DIR/lib/libichseg.so.X.Y.Z, DIR/lib/libichseg.a     shared (SONAME libichseg.so.X, with the
#                                                       links libichseg.so.X, libichseg.so) and static library
#   DIR/include/ichseg.h, DIR/include/ichseg.hpp        C header, C++17 wrapper
#   DIR/lib/cmake/ichseg/ichsegConfig.cmake (+Version)  find_package(ichseg CONFIG REQUIRED):
#                                                       ichseg::ichseg (shared), ichseg::ichseg_static
#   DIR/lib/pkgconfig/ichseg.pc, ichseg-static.pc       pkg-config --cflags --libs ichseg
#
# Default prefix /usr/local, default profile release. `--profile dist` is what a vendor ships: the
# release build linked as one unit, a quarter smaller at the same speed (Cargo.toml, docs/BENCHMARKS.md).
# `--profile debug` (what the project's tests install) takes the libraries of the test build
# (`cargo test --no-run`, in target/debug/deps): the same code, with the dev-dependencies'
# features unified in, so it reuses what `cargo test` compiled where `cargo build --lib` would
# compile tract again; with `--features` it is `cargo build --lib` of the debug profile.
# `--features LIST` builds with those features only (no defaults): `--features dicom` is the
# CPU-only library with DICOM, `--features ""` the CPU-only library alone. Default: all features.
# The static library needs the system libraries listed in ICHSEG_STATIC_LIBS below (what rustc
# reports with --print native-static-libs on Linux); the CMake target and ichseg-static.pc carry
# them.
set -euo pipefail
cd "$(dirname "$0")/.."
prefix=/usr/local profile=release build=1 features=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --prefix) prefix=$2; shift 2 ;;
    --profile) profile=$2; shift 2 ;;
    --features) features=(--no-default-features --features "$2"); shift 2 ;;
    --no-build) build=0; shift ;;
    *) echo "install.sh: unknown argument $1 (see the header of this script)" >&2; exit 2 ;;
  esac
done
case "$profile" in
  release) flags=(--release) ;;
  dist) flags=(--profile dist) ;;
  debug) flags=() ;;
  *) echo "install.sh: --profile must be release, dist or debug" >&2; exit 2 ;;
esac
ICHSEG_STATIC_LIBS="-lgcc_s -lutil -lrt -lpthread -lm -ldl -lc"
version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
target=${CARGO_TARGET_DIR:-target}/$profile
build_cmd=(cargo build --locked -p ichseg --lib "${flags[@]}" "${features[@]}")
if [[ $profile == debug && ${#features[@]} == 0 ]]; then
  build_cmd=(cargo test --locked --no-run -q)
  target=$target/deps
fi

[[ $build == 1 ]] && "${build_cmd[@]}"
for f in "$target/libichseg.so" "$target/libichseg.a"; do
  [[ -f $f ]] || { echo "install.sh: $f missing: build first (${build_cmd[*]})" >&2; exit 1; }
done

mkdir -p "$prefix/lib/cmake/ichseg" "$prefix/lib/pkgconfig" "$prefix/include"
# Versioned as shared libraries are: the file libichseg.so.MAJOR.MINOR.PATCH, the link its SONAME
# names (libichseg.so.MAJOR, what programs load; build.rs sets it) and the link for linking.
major=${version%%.*}
install -m 0755 "$target/libichseg.so" "$prefix/lib/libichseg.so.$version"
ln -sf "libichseg.so.$version" "$prefix/lib/libichseg.so.$major"
ln -sf "libichseg.so.$major" "$prefix/lib/libichseg.so"
install -m 0644 "$target/libichseg.a" "$prefix/lib/libichseg.a"
install -m 0644 include/ichseg.h bindings/cpp/ichseg.hpp "$prefix/include/"

# Relocatable: every path is found from this file's own location.
cat > "$prefix/lib/cmake/ichseg/ichsegConfig.cmake" <<CMAKE
# ichseg $version: imported targets ichseg::ichseg (shared) and ichseg::ichseg_static.
get_filename_component(_ichseg_prefix "\${CMAKE_CURRENT_LIST_DIR}/../../.." ABSOLUTE)
if(NOT TARGET ichseg::ichseg)
  add_library(ichseg::ichseg SHARED IMPORTED)
  set_target_properties(ichseg::ichseg PROPERTIES
    IMPORTED_LOCATION "\${_ichseg_prefix}/lib/libichseg.so"
    IMPORTED_SONAME "libichseg.so.$major"
    INTERFACE_INCLUDE_DIRECTORIES "\${_ichseg_prefix}/include")
  add_library(ichseg::ichseg_static STATIC IMPORTED)
  set_target_properties(ichseg::ichseg_static PROPERTIES
    IMPORTED_LOCATION "\${_ichseg_prefix}/lib/libichseg.a"
    INTERFACE_INCLUDE_DIRECTORIES "\${_ichseg_prefix}/include"
    INTERFACE_LINK_LIBRARIES "$ICHSEG_STATIC_LIBS"
    INTERFACE_LINK_OPTIONS "-Wl,-z,noexecstack")
endif()
set(ichseg_VERSION $version)
unset(_ichseg_prefix)
CMAKE
cat > "$prefix/lib/cmake/ichseg/ichsegConfigVersion.cmake" <<CMAKE
set(PACKAGE_VERSION $version)
if(PACKAGE_FIND_VERSION VERSION_GREATER PACKAGE_VERSION)
  set(PACKAGE_VERSION_COMPATIBLE FALSE)
else()
  set(PACKAGE_VERSION_COMPATIBLE TRUE)
  if(PACKAGE_FIND_VERSION VERSION_EQUAL PACKAGE_VERSION)
    set(PACKAGE_VERSION_EXACT TRUE)
  endif()
endif()
CMAKE
for variant in "" "-static"; do
  libs="-L\${libdir} -lichseg"
  # tract's assembly objects lack a .note.GNU-stack section: keep the stack non-executable
  [[ -n $variant ]] && libs="\${libdir}/libichseg.a $ICHSEG_STATIC_LIBS -Wl,-z,noexecstack"
  cat > "$prefix/lib/pkgconfig/ichseg$variant.pc" <<PC
prefix=$(cd "$prefix" && pwd)
libdir=\${prefix}/lib
includedir=\${prefix}/include

Name: ichseg$variant
Description: Intracerebral-hemorrhage segmentation of head CT (C ABI; C++17 wrapper ichseg.hpp)
Version: $version
Cflags: -I\${includedir}
Libs: $libs
PC
done
echo "installed ichseg $version ($profile) into $prefix"
