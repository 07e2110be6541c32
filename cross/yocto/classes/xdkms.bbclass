# xdkms.bbclass: builds the DKMS modules of an image for the image's kernel and installs them
# into its rootfs with xdkms, after the packages are installed (ROOTFS_POSTPROCESS_COMMAND).
#
# In an image recipe:
#   inherit xdkms
#   IMAGE_INSTALL += "my-module-dkms"    # any package that puts a dkms.conf tree in /usr/src
#
# The modules are every /usr/src/*/dkms.conf tree in the rootfs, or XDKMS_MODULES (source
# directories inside the rootfs, or module/version). They are built against the kernel's build
# directory (STAGING_KERNEL_BUILDDIR, whose kbuild host tools run on the build host) with the
# target toolchain, signed when XDKMS_SIGNING_KEY and XDKMS_SIGNING_CERT are set, compressed as
# the kernel expects, and installed under /lib/modules/<kernel release> with fresh indexes.
# xdkms leaves a dkms tree in /var/lib/dkms that the target's own dkms can take over.

# The xdkms binary on the build host (a native recipe's, or one on PATH).
XDKMS ?= "xdkms"
XDKMS_MODULES ?= ""
XDKMS_SIGNING_KEY ?= ""
XDKMS_SIGNING_CERT ?= ""
XDKMS_EXTRA_ARGS ?= ""
# A build cache directory: a module whose inputs (source, dkms.conf, kernel .config and
# Module.symvers, compiler, signing key, compression) were built before is restored from it
# instead of rebuilt. Share it between builds and build hosts like SSTATE_DIR, e.g.
# XDKMS_CACHE = "${SSTATE_DIR}/xdkms" in local.conf or site.conf (SSTATE_DIR is outside
# pseudo's view). Empty: no cache.
XDKMS_CACHE ?= ""

# The kernel's build directory and version, and the cross compiler.
do_rootfs[depends] += "virtual/kernel:do_shared_workdir virtual/${TARGET_PREFIX}gcc:do_populate_sysroot"

ROOTFS_POSTPROCESS_COMMAND += "xdkms_rootfs_install; "

xdkms_rootfs_install() {
    modules="${XDKMS_MODULES}"
    if [ -z "$modules" ]; then
        for conf in ${IMAGE_ROOTFS}/usr/src/*/dkms.conf; do
            if [ -f "$conf" ]; then modules="$modules ${conf%/dkms.conf}"; fi
        done
    fi
    if [ -z "$modules" ]; then
        bbnote "xdkms: no DKMS module in the rootfs"
        return 0
    fi
    signing=""
    if [ -n "${XDKMS_SIGNING_KEY}" ]; then
        signing="--mok-signing-key ${XDKMS_SIGNING_KEY} --mok-certificate ${XDKMS_SIGNING_CERT}"
    fi
    cache=""
    if [ -n "${XDKMS_CACHE}" ]; then
        cache="--cache ${XDKMS_CACHE}"
    fi
    # PARALLEL_MAKE (-j N) bounds the whole run: every build shares one jobserver.
    # The kernel's release comes from its build directory (include/generated/utsrelease.h).
    ${XDKMS} install --root ${IMAGE_ROOTFS} \
        --kernel-build ${STAGING_KERNEL_BUILDDIR} --cross-compile ${TARGET_PREFIX} \
        ${PARALLEL_MAKE} $signing $cache ${XDKMS_EXTRA_ARGS} $modules
}
