//! The xdkms binary: collects the arguments and hands them to the library; the exit status is its.

fn main() {
    // The build sandbox's helper: this binary run again to enter a mount namespace (before any
    // thread starts, as unshare needs) and execute a build command; it returns only on failure.
    let raw: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if raw.get(1).is_some_and(|a| a == xdkms::dkms::sandbox::HELPER) {
        std::process::exit(xdkms::dkms::sandbox::helper_main(&raw[2..]));
    }
    // Before any file is opened: the descriptors a parent make's MAKEFLAGS names are its.
    xdkms::dkms::parallel::adopt_parent_jobserver();
    let args: Result<Vec<String>, _> = std::env::args_os().map(|a| a.into_string()).collect();
    let code = match args {
        Ok(args) => xdkms::cli::main_with_args(args),
        Err(bad) => {
            eprintln!("xdkms: argument is not valid UTF-8: {}", bad.to_string_lossy());
            xdkms::exit::Exit::Usage
        }
    };
    std::process::exit(code.code());
}
