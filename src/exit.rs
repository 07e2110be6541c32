//! Exit statuses: dkms's table (the README's "Exit codes"), the one place their numbers are
//! written. Several reasons share a number, as in dkms; each has its own name here.

/// Why a command ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    Success,
    /// Module and version not given; -k and -a counts differ; a bad depmod/modinfo command line.
    Usage,
    /// An unexpected I/O or process failure.
    Io,
    /// depmod, modinfo or an initramfs command failed (kmod's tools exit 1 for any failure).
    Failed,
    /// An unknown option or value, -k with --all, a name that is not one path component.
    BadArguments,
    /// The module's source directory is missing.
    MissingSource,
    /// Already added, not added, already built.
    TreeState,
    /// dkms's status for -a with --all.
    ArchWithAll,
    /// The dkms.conf cannot be read.
    NoConf,
    /// An added module whose source is gone.
    Broken,
    /// autoinstall on the host with several kernels.
    AutoinstallKernels,
    /// --all with add, build or install.
    Unsupported,
    /// A patch missing or with a `..` component.
    BadPatch,
    /// The version check refused the install, or a built module is missing.
    InstallAborted,
    /// No `lib/modules/<kernel>` to install into.
    NoKernelDir,
    /// A patch did not apply.
    PatchFailed,
    /// The native depmod failed after installing.
    DepmodFailed,
    /// make succeeded but a module the conf names was not built.
    ModuleNotBuilt,
    /// The dkms.conf is invalid.
    BadConf,
    /// The source directory holds (almost) nothing.
    EmptySource,
    /// A source directory without dkms.conf.
    NoConfInSource,
    /// make (or strip) failed.
    MakeFailed,
    /// autoinstall: one or more modules failed.
    AutoinstallFailed,
    /// The arch asked for is unknown, or is not the kernel's.
    Arch,
    /// Kernel headers missing, or of another release (dkms 3.1.5 and later).
    NoHeaders,
    /// xdkms: no compiler for the target kernel on PATH.
    NoToolchain,
    /// xdkms: the headers' kbuild host programs are missing or built for another machine.
    HostTools,
    /// BUILD_EXCLUSIVE rules exclude this kernel.
    Excluded,
    /// The status the same command exited with, run on an image's parts in a child process:
    /// passed on as it was.
    Relayed(u8),
    /// PRE_INSTALL failed.
    PreInstallFailed,
    /// generate_mok could not make the key pair.
    MokNotGenerated,
    /// kernel_postinst, kernel_prerm or kernel_preinst without exactly one kernel.
    OneKernel,
    /// kernel_prerm or kernel_preinst: a module could not be removed.
    KernelHookFailed,
    /// mktarball: not built for a kernel asked for.
    TarballNotBuilt,
    /// ldtarball: no valid dkms.conf in the archive, or it cannot be unpacked.
    NotATarball,
    /// mktarball: the tarball's directory cannot be written.
    TarballUnwritable,
    /// xdkms, between its own processes: a run on an image's parts extracted in part needs what
    /// was left out (a build, the kernels' headers); the run that extracted them starts it again
    /// on the whole. Never the status of a command.
    WholeRootWanted,
}

impl Exit {
    /// The process exit status.
    pub fn code(self) -> i32 {
        match self {
            Exit::Success => 0,
            Exit::Usage | Exit::Io | Exit::Failed | Exit::MokNotGenerated => 1,
            Exit::BadArguments | Exit::MissingSource => 2,
            Exit::TreeState | Exit::ArchWithAll => 3,
            Exit::NoConf | Exit::Broken | Exit::AutoinstallKernels | Exit::OneKernel => 4,
            Exit::Unsupported | Exit::BadPatch => 5,
            Exit::InstallAborted
            | Exit::NoKernelDir
            | Exit::PatchFailed
            | Exit::DepmodFailed
            | Exit::TarballNotBuilt => 6,
            Exit::ModuleNotBuilt | Exit::NotATarball => 7,
            Exit::BadConf | Exit::EmptySource => 8,
            Exit::NoConfInSource | Exit::TarballUnwritable => 9,
            Exit::MakeFailed => 10,
            Exit::AutoinstallFailed => 11,
            Exit::Arch => 12,
            Exit::KernelHookFailed => 14,
            Exit::NoHeaders => 21,
            Exit::NoToolchain => 22,
            Exit::HostTools => 23,
            Exit::Excluded => 77,
            Exit::PreInstallFailed => 101,
            Exit::WholeRootWanted => 199,
            Exit::Relayed(code) => i32::from(code),
        }
    }
}
