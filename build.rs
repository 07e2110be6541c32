//! Build script: compiles the small C layer over e2fsprogs' libext2fs (ext4 images as roots)
//! and links libext2fs and libcom_err statically, so the binary needs neither at run time.

use std::path::Path;

fn main() {
    let shim = "src/image_root/ext4_shim.c";
    println!("cargo:rerun-if-changed={shim}");
    println!("cargo:rerun-if-env-changed=XDKMS_EXT2FS_LIBDIR");
    let libdir = std::env::var("XDKMS_EXT2FS_LIBDIR").unwrap_or_else(|_| multiarch_libdir());
    for lib in ["ext2fs", "com_err"] {
        if !Path::new(&libdir).join(format!("lib{lib}.a")).exists() {
            panic!(
                "lib{lib}.a is not in {libdir}: install Debian's libext2fs-dev and comerr-dev \
                 (tests/setup.sh does), or name their directory in XDKMS_EXT2FS_LIBDIR"
            );
        }
    }
    cc::Build::new().file(shim).warnings(true).extra_warnings(true).compile("xdkms_ext4");
    println!("cargo:rustc-link-search=native={libdir}");
    println!("cargo:rustc-link-lib=static=ext2fs");
    println!("cargo:rustc-link-lib=static=com_err");
}

/// Where Debian puts the static libraries for the target being built.
fn multiarch_libdir() -> String {
    let arch = std::env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_default();
    let triple = match arch.as_str() {
        "x86_64" => "x86_64-linux-gnu",
        "aarch64" => "aarch64-linux-gnu",
        other => return format!("/usr/lib/{other}-linux-gnu"),
    };
    format!("/usr/lib/{triple}")
}
