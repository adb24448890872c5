//! The header-only C++17 wrapper `bindings/cpp/ichseg.hpp`, as C++ viewers use it.
//!
//! - `cpp_wrapper_program_passes`: compiles `tests/cpp/test_wrapper.cpp` (C++17, warnings as
//!   errors) with the system C++ compiler (`c++`, else `g++`) against the wrapper and
//!   `include/ichseg.h`, links it to the shared library, runs it and requires exit status 0.
//!   Skipped, saying so, only when no C++ compiler is installed.
//!
//! The shared library is the one cargo builds next to this test's executable in
//! `<target>/<profile>/deps/`, exactly as in `tests/c_abi.rs` (see its module docs for why);
//! this test never runs cargo itself.

mod native;

use native::{compile_and_run, have};

#[test]
fn cpp_wrapper_program_passes() {
    let Some(cxx) = ["c++", "g++"].into_iter().find(|t| have(t)) else {
        eprintln!("SKIPPED cpp_wrapper_program_passes: no C++ compiler (`c++` or `g++`) on PATH (install g++ or clang to run the C++ wrapper test)");
        return;
    };
    compile_and_run(
        cxx,
        &["-std=c++17", "-Wall", "-Wextra", "-Wpedantic", "-Werror", "-g", "-O1", "-pthread"],
        "tests/cpp/test_wrapper.cpp",
        &["bindings/cpp"],
        "all C++ wrapper checks passed",
    );
}

#[test]
fn cpp_wrapper_program_passes_under_asan_and_ubsan() {
    let Some(cxx) = ["c++", "g++"].into_iter().find(|t| have(t)) else {
        eprintln!("SKIPPED cpp_wrapper_program_passes_under_asan_and_ubsan: no C++ compiler on PATH");
        return;
    };
    let flags = [&["-std=c++17", "-Wall", "-Werror", "-g", "-O1", "-pthread"], native::SANITIZE].concat();
    compile_and_run(cxx, &flags, "tests/cpp/test_wrapper.cpp", &["bindings/cpp"], "all C++ wrapper checks passed");
}
