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

use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The shared library built with this test: next to the test executable in `<profile>/deps/`,
/// else the copy `cargo build` puts in `<profile>/`.
fn shared_library() -> PathBuf {
    let name = format!("{}ichseg{}", std::env::consts::DLL_PREFIX, std::env::consts::DLL_SUFFIX);
    let exe = std::env::current_exe().expect("the test knows its executable");
    let deps = exe.parent().expect("the test executable is in a directory");
    let candidates = [deps.join(&name), deps.parent().unwrap_or(deps).join(&name)];
    candidates.iter().find(|p| p.is_file()).cloned().unwrap_or_else(|| {
        panic!(
            "{name} is in neither {} nor {}: cargo should have built the cdylib with the library \
             (crate-type in Cargo.toml); try `cargo build --lib`",
            candidates[0].display(),
            candidates[1].display()
        )
    })
}

fn have(tool: &str) -> bool {
    Command::new(tool).arg("--version").output().is_ok()
}

#[test]
fn cpp_wrapper_program_passes() {
    let Some(cxx) = ["c++", "g++"].into_iter().find(|t| have(t)) else {
        eprintln!("SKIPPED cpp_wrapper_program_passes: no C++ compiler (`c++` or `g++`) on PATH (install g++ or clang to run the C++ wrapper test)");
        return;
    };
    let lib = shared_library();
    let lib_dir = lib.parent().unwrap();
    println!("compiling with {cxx}, linking {}", lib.display());
    let tmp = tempfile::tempdir().unwrap();
    let exe = tmp.path().join("test_wrapper");
    // Same flags as tests/c/run_valgrind.sh.
    let status = Command::new(cxx)
        .args(["-std=c++17", "-Wall", "-Wextra", "-Wpedantic", "-Werror", "-g", "-O1", "-pthread"])
        .arg("-I")
        .arg(root().join("include"))
        .arg("-I")
        .arg(root().join("bindings/cpp"))
        .arg(root().join("tests/cpp/test_wrapper.cpp"))
        .arg("-o")
        .arg(&exe)
        .arg(format!("-L{}", lib_dir.display()))
        .arg(format!("-Wl,-rpath,{}", lib_dir.display()))
        .arg("-lichseg")
        .status()
        .expect("the C++ compiler runs");
    assert!(status.success(), "compiling tests/cpp/test_wrapper.cpp failed ({status})");

    // The NIfTI fixture, decompressed: the program reads its header and int16 voxels into a
    // std::vector, the way a viewer holds its own buffer.
    let nii = tmp.path().join("ct_small.nii");
    let gz = std::fs::File::open(root().join("tests/fixtures/unet/ct_small.nii.gz")).unwrap();
    let mut raw = Vec::new();
    std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(gz), &mut raw).unwrap();
    std::fs::write(&nii, raw).unwrap();

    let output = Command::new(&exe)
        .arg(root().join("tests/fixtures/unet"))
        .arg(&nii)
        .env("LD_LIBRARY_PATH", lib_dir)
        .output()
        .expect("the compiled C++ test runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    println!("{stdout}");
    eprintln!("{stderr}");
    assert!(output.status.success(), "tests/cpp/test_wrapper.cpp failed ({}):\n{stderr}", output.status);
    assert!(stdout.contains("all C++ wrapper checks passed"), "the C++ test ended early:\n{stdout}");
}
