//! The C ABI as C programs see it.
//!
//! - `header_is_up_to_date`: regenerates `include/ichseg.h` in memory with cbindgen and fails
//!   when the committed file differs; `ICHSEG_UPDATE_HEADER=1 cargo test --test c_abi header_is_up_to_date`
//!   rewrites it.
//! - `c_program_passes`: compiles `tests/c/test_capi.c` (C99, warnings as errors) with the
//!   system `cc` against the header, links it to the shared library, runs it and requires
//!   exit status 0. Skipped, saying so, only when no `cc` is installed.
//! - `header_compiles_as_cpp`: the header also compiles as C++17 with warnings as errors
//!   (C++ viewers include it directly; skipped when `c++` is missing).
//! - `only_ichseg_symbols_are_exported`: the shared library's dynamic symbol table defines
//!   symbols named `ichseg_*` only (skipped when `nm` is missing).
//! - `no_build_profile_aborts_on_panic`: no profile in Cargo.toml (the `dist` one for products
//!   included) sets `panic = "abort"`, which would turn the C boundary's caught panics into aborts.
//!
//! Where the shared library comes from: `Cargo.toml` builds the library as
//! `crate-type = ["rlib", "cdylib", "staticlib"]`, and cargo compiles all of a library's crate
//! types in the one rustc run that the integration tests depend on. So `cargo test` always
//! leaves a fresh `libichseg.so` in the directory of the test executables,
//! `<target>/<profile>/deps/` (checked: touching src/capi rebuilds it there). It does *not*
//! refresh the copy in `<target>/<profile>/`, which only `cargo build` updates and which may be
//! stale, so the test links the one next to its own executable (found through
//! `current_exe`, so `--release`, `--target`, `CARGO_TARGET_DIR` and a separate build
//! directory all work). It never runs cargo itself: the outer `cargo test` holds the build
//! lock, and a nested build would only wait on it.

mod native;

use native::{compile_and_run, have, root, shared_library};
use std::process::Command;

/// The header cbindgen makes from src/capi/ with cbindgen.toml.
fn generate_header() -> String {
    let config = cbindgen::Config::from_file(root().join("cbindgen.toml")).expect("cbindgen.toml parses");
    let bindings = cbindgen::Builder::new()
        .with_config(config)
        .with_src(root().join("src/capi/mod.rs"))
        .generate()
        .expect("cbindgen generates the header from src/capi");
    let mut out = Vec::new();
    bindings.write(&mut out);
    String::from_utf8(out).expect("the header is UTF-8")
}

#[test]
fn header_is_up_to_date() {
    let fresh = generate_header();
    let path = root().join("include/ichseg.h");
    if std::env::var_os("ICHSEG_UPDATE_HEADER").is_some_and(|v| v != "0") {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, &fresh).unwrap();
        eprintln!("wrote {}", path.display());
        return;
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    if committed != fresh {
        let first_diff = committed
            .lines()
            .zip(fresh.lines())
            .position(|(a, b)| a != b)
            .unwrap_or_else(|| committed.lines().count().min(fresh.lines().count()));
        panic!(
            "include/ichseg.h is stale: it differs from what cbindgen generates from src/capi/ \
             (first difference at line {}: committed {:?}, generated {:?}).\n\
             Regenerate it with: ICHSEG_UPDATE_HEADER=1 cargo test --test c_abi header_is_up_to_date",
            first_diff + 1,
            committed.lines().nth(first_diff).unwrap_or("<end of file>"),
            fresh.lines().nth(first_diff).unwrap_or("<end of file>"),
        );
    }
    // Every prototype (cbindgen writes each on one line at column 0) is an ichseg_* function.
    let prototypes: Vec<&str> = fresh
        .lines()
        .filter(|l| l.ends_with(");") && !l.starts_with(' ') && !l.starts_with("typedef"))
        .filter_map(|l| l.split('(').next()?.split_whitespace().last())
        .map(|name| name.trim_start_matches('*'))
        .collect();
    assert!(prototypes.contains(&"ichseg_segment"), "no ichseg_segment prototype found in the header");
    for name in prototypes {
        assert!(name.starts_with("ichseg_"), "the header declares {name}, which lacks the ichseg_ prefix");
    }
}

#[test]
fn c_program_passes() {
    if !have("cc") {
        eprintln!("SKIPPED c_program_passes: no C compiler `cc` on PATH (install gcc or clang to run the C ABI test)");
        return;
    }
    compile_and_run(
        "cc",
        &["-std=c99", "-Wall", "-Wextra", "-Wpedantic", "-Werror", "-g", "-O1", "-pthread"],
        "tests/c/test_capi.c",
        &[],
        "all C ABI checks passed",
    );
}

/// A volume too big for the process's address space (`ulimit -v`, in a shell around the
/// program) is ICHSEG_STATUS_OUT_OF_MEMORY, not an abort: tests/c/test_oom.c.
#[test]
fn a_volume_too_big_for_memory_is_an_error_not_an_abort() {
    if !have("cc") {
        eprintln!("SKIPPED a_volume_too_big_for_memory_is_an_error_not_an_abort: no C compiler `cc` on PATH");
        return;
    }
    let (_tmp, exe) = native::compile("cc", &["-std=c99", "-Wall", "-Werror", "-O1"], "tests/c/test_oom.c", &[]);
    let output = Command::new("sh")
        .args(["-c", "ulimit -v 3500000 && exec \"$0\" \"$1\""])
        .arg(&exe)
        .arg(root().join("tests/fixtures/unet"))
        .output()
        .expect("sh runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    println!("{stdout}\n{stderr}");
    assert!(output.status.success(), "test_oom failed ({}):\n{stderr}", output.status);
    assert!(stdout.contains("all out-of-memory checks passed"), "{stdout}");
}

#[test]
fn c_program_passes_under_asan_and_ubsan() {
    if !have("cc") {
        eprintln!("SKIPPED c_program_passes_under_asan_and_ubsan: no C compiler `cc` on PATH");
        return;
    }
    let flags = [&["-std=c99", "-Wall", "-Werror", "-g", "-O1", "-pthread"], native::SANITIZE].concat();
    compile_and_run("cc", &flags, "tests/c/test_capi.c", &[], "all C ABI checks passed");
}

#[test]
fn header_compiles_as_cpp() {
    if !have("c++") {
        eprintln!("SKIPPED header_compiles_as_cpp: no `c++` on PATH");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("include_header.cpp");
    std::fs::write(&src, "#include \"ichseg.h\"\nint main() {\n  IchsegEngineOptions o;\n  ichseg_engine_options_init(&o);\n  return static_cast<int>(o.threads);\n}\n").unwrap();
    let status = Command::new("c++")
        .args(["-std=c++17", "-Wall", "-Wextra", "-Wpedantic", "-Werror", "-fsyntax-only"])
        .arg("-I")
        .arg(root().join("include"))
        .arg(&src)
        .status()
        .expect("c++ runs");
    assert!(status.success(), "include/ichseg.h does not compile as C++17 ({status})");
}

#[test]
fn only_ichseg_symbols_are_exported() {
    if !have("nm") {
        eprintln!("SKIPPED only_ichseg_symbols_are_exported: no `nm` on PATH");
        return;
    }
    let lib = shared_library();
    let output = Command::new("nm").args(["-D", "--defined-only"]).arg(&lib).output().expect("nm runs");
    assert!(output.status.success(), "nm -D {} failed", lib.display());
    let symbols = String::from_utf8_lossy(&output.stdout);
    // Every defined dynamic symbol (functions, data, anything) must carry the prefix.
    let names: Vec<&str> = symbols.lines().filter_map(|l| l.split_whitespace().last()).collect();
    let foreign: Vec<&&str> = names.iter().filter(|n| !n.starts_with("ichseg_")).collect();
    assert!(names.contains(&"ichseg_segment"), "ichseg_segment is not exported:\n{symbols}");
    assert!(foreign.is_empty(), "{} exports symbols outside the ichseg_ prefix: {foreign:?}", lib.display());
}

/// The shared library carries its SONAME (build.rs), which installs version their files by.
#[test]
fn the_shared_library_has_a_soname() {
    if !have("objdump") {
        eprintln!("SKIPPED the_shared_library_has_a_soname: no `objdump` on PATH");
        return;
    }
    let lib = shared_library();
    let output = Command::new("objdump").arg("-p").arg(&lib).output().expect("objdump runs");
    let dynamic = String::from_utf8_lossy(&output.stdout);
    let soname = dynamic.lines().find_map(|l| l.trim().strip_prefix("SONAME")).map(str::trim);
    assert_eq!(soname, Some(native::SONAME), "{}", lib.display());
}

/// Every build profile keeps panics unwinding: the C boundary turns a panic into
/// `ICHSEG_STATUS_PANIC` by catching it, which `panic = "abort"` (a common size setting) would
/// make impossible, killing the host instead.
#[test]
fn no_build_profile_aborts_on_panic() {
    let manifest = std::fs::read_to_string(root().join("Cargo.toml")).expect("Cargo.toml reads");
    let aborting: Vec<&str> = manifest
        .lines()
        .map(|l| l.split('#').next().unwrap_or("").trim())
        .filter(|l| l.replace(' ', "").starts_with("panic=") && l.contains("abort"))
        .collect();
    assert!(
        manifest.contains("[profile.dist]"),
        "Cargo.toml has no [profile.dist] (scripts/install.sh --profile dist)"
    );
    assert!(aborting.is_empty(), "Cargo.toml sets panics to abort: {aborting:?}");
}
