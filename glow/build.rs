//! Link settings for binaries that use libtorch from the project's venv.
//!
//! torch-sys tells us where libtorch lives (`DEP_TCH_LIBTORCH_LIB`). We embed
//! that directory as an rpath so that the binaries run without
//! `LD_LIBRARY_PATH`, and we link `libtorch_cuda` with `--no-as-needed`: no
//! symbol of it is referenced directly, so the linker's as-needed default would
//! drop it and the binaries would never see a GPU.

use std::path::Path;

fn main() {
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    let Ok(lib_dir) = std::env::var("DEP_TCH_LIBTORCH_LIB") else {
        return;
    };
    println!("cargo:rustc-link-arg=-Wl,-rpath,{lib_dir}");
    if Path::new(&lib_dir).join("libtorch_cuda.so").exists() {
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
        println!("cargo:rustc-link-arg=-ltorch_cuda");
        println!("cargo:rustc-link-arg=-Wl,--as-needed");
    }
}
