//! Gives the shared library a SONAME on Linux, `libichseg.so.MAJOR`, so that installs can keep
//! versioned files (scripts/install.sh: libichseg.so -> libichseg.so.MAJOR ->
//! libichseg.so.MAJOR.MINOR.PATCH) and programs linked to one major version load only that.
fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    if std::env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("linux") {
        let major = std::env::var("CARGO_PKG_VERSION_MAJOR").unwrap_or_else(|_| "0".into());
        println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,libichseg.so.{major}");
    }
}
