//! Link settings for the worker, which runs libtorch through `glow`: the
//! same as glow's own binaries get (see glow/build.rs). torch-sys tells us
//! where libtorch lives; we embed that directory as an rpath so the worker
//! and its tests run without `LD_LIBRARY_PATH`, and keep `libtorch_cuda`
//! linked (no symbol of it is referenced directly) so that a GPU is seen.

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
