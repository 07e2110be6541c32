################################################################################
# xdkms package infrastructure for Buildroot: a package whose source is a DKMS module (a
# dkms.conf at its top) is added to the target's dkms tree, built by xdkms for the kernel
# Buildroot built, and installed into TARGET_DIR with fresh module indexes.
#
# Install: copy this file to package/pkg-xdkms.mk (Buildroot includes package/pkg-*.mk), or
# include it from a BR2_EXTERNAL tree's external.mk. A package then reads:
#
#   FOO_VERSION = 1.2
#   FOO_SITE = https://example.org/foo
#   FOO_LICENSE = GPL-2.0
#   $(eval $(xdkms-package))
#   $(eval $(generic-package))
#
# xdkms comes from the build host (XDKMS), or from a host-xdkms package listed in
# XDKMS_DEPENDENCIES. Its builds take their jobs from Buildroot's own make jobserver (the
# commands run as recursive make lines, `+`), so the build never exceeds BR2_JLEVEL jobs.
################################################################################

XDKMS ?= xdkms
XDKMS_DEPENDENCIES ?=
# Every call: the target root, the kernel Buildroot built (its build directory holds the kbuild
# host tools for this build host), the toolchain's prefix. xdkms signs (XDKMS_SIGNING_ARGS) and
# compresses as the kernel's configuration says.
# XDKMS_EXTRA_ARGS takes any other option (--compress, --verbose, ...).
XDKMS_SIGNING_ARGS ?=
XDKMS_EXTRA_ARGS ?=
# A build cache directory shared by every build of every configuration on this host (or, on
# NFS, by several hosts): a module whose inputs (source, dkms.conf, kernel .config and
# Module.symvers, compiler, signing key, compression) were built before is restored, not
# rebuilt, so `make clean all` and a second defconfig with the same kernel skip the compiler.
# Empty: no cache.
XDKMS_CACHE ?=
XDKMS_ARGS = --root $(TARGET_DIR) -k $(LINUX_VERSION_PROBED) --kernel-build $(LINUX_DIR) \
	--cross-compile $(TARGET_CROSS) $(if $(XDKMS_CACHE),--cache $(XDKMS_CACHE)) \
	$(XDKMS_SIGNING_ARGS) $(XDKMS_EXTRA_ARGS)

# inner-xdkms-package -- hooks for the package (pkgname, PKG): the build step adds and builds
# the module (again on a rebuild: --force), the target-install step installs it.
define inner-xdkms-package

$(2)_DEPENDENCIES += linux $$(XDKMS_DEPENDENCIES)

define $(2)_XDKMS_BUILD
	+$$(TARGET_MAKE_ENV) $$(XDKMS) build --force $$(XDKMS_ARGS) $$(@D)
endef
$(2)_POST_BUILD_HOOKS += $(2)_XDKMS_BUILD

define $(2)_XDKMS_INSTALL_TARGET
	+$$(TARGET_MAKE_ENV) $$(XDKMS) install --force $$(XDKMS_ARGS) $$(@D)
endef
$(2)_POST_INSTALL_TARGET_HOOKS += $(2)_XDKMS_INSTALL_TARGET

endef

xdkms-package = $(call inner-xdkms-package,$(pkgname),$(call UPPERCASE,$(pkgname)))
