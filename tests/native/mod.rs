//! Shared by the C and C++ program tests: find the cdylib cargo built with the tests, compile a
//! test program against it with the system compiler, and run it on the fixtures.

use std::path::{Path, PathBuf};
use std::process::Command;

pub fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The shared library built with this test: next to the test executable in `<profile>/deps/`
/// (cargo puts the cdylib there for tests, see tests/c_abi.rs), else the copy `cargo build`
/// puts in `<profile>/`.
pub fn shared_library() -> PathBuf {
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

/// Compiler flags for AddressSanitizer + UndefinedBehaviorSanitizer builds of the test programs
/// (the Rust library itself is not instrumented; ASan still sees every malloc/free and every
/// out-of-bounds access the program makes on buffers it hands over). UBSan findings abort.
pub const SANITIZE: &[&str] =
    &["-fsanitize=address,undefined", "-fno-omit-frame-pointer", "-fno-sanitize-recover=undefined"];

/// The library's SONAME (build.rs): what a program linked to it asks the loader for.
pub const SONAME: &str = concat!("libichseg.so.", env!("CARGO_PKG_VERSION_MAJOR"));

/// Links `dir/libichseg.so` and `dir/<SONAME>` to `lib` (cargo's unversioned file), as an install
/// does, so that programs linked with `-L dir -lichseg` find their SONAME at run time; returns `dir`.
pub fn link_with_soname<'a>(lib: &Path, dir: &'a Path) -> &'a Path {
    for name in ["libichseg.so", SONAME] {
        std::os::unix::fs::symlink(lib, dir.join(name)).expect("symlink the library");
    }
    dir
}

pub fn have(tool: &str) -> bool {
    Command::new(tool).arg("--version").output().is_ok()
}

/// Compiles `source` (relative to the repository) with `compiler` and `flags` (same flags as
/// tests/c/run_valgrind.sh) against include/ and `extra_includes`, links the cdylib, runs it
/// with the fixture folder and a decompressed copy of ct_small.nii (the program reads its
/// header and int16 voxels the way a viewer hands its own buffer over), and requires exit
/// status 0 and `done_marker` on stdout.
pub fn compile_and_run(compiler: &str, flags: &[&str], source: &str, extra_includes: &[&str], done_marker: &str) {
    let (tmp, exe) = compile(compiler, flags, source, extra_includes);
    let lib_dir = tmp.path();

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
        .expect("the compiled test program runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    println!("{stdout}");
    eprintln!("{stderr}");
    assert!(output.status.success(), "{source} failed ({}):\n{stderr}", output.status);
    assert!(stdout.contains(done_marker), "{source} ended early:\n{stdout}");
}

/// Compiles `source` into a program in a fresh temporary folder (kept alive by the returned
/// handle), linked to the cdylib with an rpath to it.
pub fn compile(compiler: &str, flags: &[&str], source: &str, extra_includes: &[&str]) -> (tempfile::TempDir, PathBuf) {
    let lib = shared_library();
    println!("compiling {source} with {compiler}, linking {}", lib.display());
    let tmp = tempfile::tempdir().unwrap();
    let lib_dir = link_with_soname(&lib, tmp.path());
    let exe = tmp.path().join("test_program");
    let mut cmd = Command::new(compiler);
    cmd.args(flags).arg("-I").arg(root().join("include"));
    for inc in extra_includes {
        cmd.arg("-I").arg(root().join(inc));
    }
    let status = cmd
        .arg(root().join(source))
        .arg("-o")
        .arg(&exe)
        .arg(format!("-L{}", lib_dir.display()))
        .arg(format!("-Wl,-rpath,{}", lib_dir.display()))
        .args(["-lichseg", "-lm"])
        .status()
        .expect("the compiler runs");
    assert!(status.success(), "compiling {source} failed ({status})");
    (tmp, exe)
}
