//! The xdkms binary: collects the arguments and hands them to the library; the exit status is its.

fn main() {
    // Before any file is opened: the descriptors a parent make's MAKEFLAGS names are its.
    xdkms::dkms::parallel::adopt_parent_jobserver();
    let args: Result<Vec<String>, _> = std::env::args_os().map(|a| a.into_string()).collect();
    let code = match args {
        Ok(args) => xdkms::cli::main_with_args(args),
        Err(bad) => {
            eprintln!("xdkms: argument is not valid UTF-8: {}", bad.to_string_lossy());
            xdkms::cli::EXIT_USAGE
        }
    };
    std::process::exit(code);
}
