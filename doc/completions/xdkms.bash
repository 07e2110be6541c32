# bash completion for xdkms (install as /usr/share/bash-completion/completions/xdkms). Where
# xdkms is also installed as depmod, modinfo or sign-file, `complete -F _xdkms depmod` (and so
# on) completes those names the same way.
# Kept in the repository; tests/integration/docs.rs checks that every option is here.

_xdkms_dkms_options='-m --module -v --module-version -k --kernelver -a --arch --all --force
  --force-version-override -c --conf --kernelsourcedir --kernel-build --config --dkmstree
  --sourcetree --installtree --root -j --jobs -q --quiet --verbose --no-depmod --directive
  --cross-compile --compress --json --templatekernel --archive --source-only --binaries-only
  --mok-signing-key --mok-certificate --sign-file --sign-command --cache --no-cache --format --out
  --initramfs -V --version --help'
_xdkms_depmod_options='-a --all -A --quick -b --basedir -C --config -E --symvers -F --filesyms
  -e --errsyms -v --verbose -n --show --dry-run -P --symbol-prefix -w --warn -V --version
  -h --help -o --outdir -m --moduledir --kmod-version --kmod-features'
_xdkms_modinfo_options='-a --author -d --description -l --license -p --parameters -n --filename
  -0 --null -m --modname -F --field -k --set-version -b --basedir -V --version -h --help'
_xdkms_initramfs_list='--segments --help'
_xdkms_initramfs_extract='--max-unpacked --help'
_xdkms_initramfs_create='-o --output --compress --help'
_xdkms_initramfs_inject='--root -k --kernel --mode --compress -o --output --kmod-version
  --kmod-features --level --max-unpacked --in-root --help'
_xdkms_cache_prune='--max-size --cache --help'
_xdkms_sign_file_options='-s -d -p -k'
_xdkms_commands='add build install uninstall unbuild remove status autoinstall match mktarball
  ldtarball generate_mok kernel_postinst kernel_prerm kernel_preinst plan build-one collect
  initramfs-inject depmod modinfo initramfs cache sign-file'

_xdkms() {
  local cur prev command
  cur=${COMP_WORDS[COMP_CWORD]}
  prev=${COMP_WORDS[COMP_CWORD-1]}
  command=${COMP_WORDS[0]##*/}
  if [[ $command == xdkms ]]; then
    if (( COMP_CWORD == 1 )); then
      COMPREPLY=($(compgen -W "$_xdkms_commands --version -V --help" -- "$cur"))
      return
    fi
    command=${COMP_WORDS[1]}
  fi
  case $prev in
    -b|--basedir|--root|--dkmstree|--sourcetree|--installtree|--kernelsourcedir|--kernel-build|\
    --config|-c|--conf|--archive|--mok-signing-key|--mok-certificate|--sign-file|--cache|--out|-o|--output|--outdir|\
    -C|-E|--symvers|-F|--filesyms)
      COMPREPLY=($(compgen -f -- "$cur")); return ;;
    --compress)
      COMPREPLY=($(compgen -W "none gz xz zst gzip zstd lz4 bzip2 lzma keep" -- "$cur")); return ;;
    --mode)
      COMPREPLY=($(compgen -W "rewrite append" -- "$cur")); return ;;
    --format)
      COMPREPLY=($(compgen -W "json make ninja" -- "$cur")); return ;;
    -k|--kernelver|--templatekernel|--kernel|--set-version)
      COMPREPLY=($(compgen -W "$(ls /lib/modules 2>/dev/null)" -- "$cur")); return ;;
  esac
  case $command in
    depmod) COMPREPLY=($(compgen -W "$_xdkms_depmod_options" -- "$cur")) ;;
    modinfo) COMPREPLY=($(compgen -W "$_xdkms_modinfo_options" -- "$cur")) ;;
    sign-file) COMPREPLY=($(compgen -W "$_xdkms_sign_file_options" -f -- "$cur")) ;;
    initramfs)
      local sub=${COMP_WORDS[2]}
      [[ ${COMP_WORDS[0]##*/} == xdkms ]] || sub=${COMP_WORDS[1]}
      case $sub in
        list) COMPREPLY=($(compgen -W "$_xdkms_initramfs_list" -f -- "$cur")) ;;
        extract) COMPREPLY=($(compgen -W "$_xdkms_initramfs_extract" -f -- "$cur")) ;;
        create) COMPREPLY=($(compgen -W "$_xdkms_initramfs_create" -f -- "$cur")) ;;
        inject) COMPREPLY=($(compgen -W "$_xdkms_initramfs_inject" -f -- "$cur")) ;;
        *) COMPREPLY=($(compgen -W "list extract create inject" -- "$cur")) ;;
      esac ;;
    cache)
      case ${COMP_WORDS[2]} in
        prune) COMPREPLY=($(compgen -W "$_xdkms_cache_prune" -- "$cur")) ;;
        *) COMPREPLY=($(compgen -W "prune" -- "$cur")) ;;
      esac ;;
    *)
      if [[ $cur == -* ]]; then
        COMPREPLY=($(compgen -W "$_xdkms_dkms_options" -- "$cur"))
      else
        COMPREPLY=($(compgen -W "$(ls /var/lib/dkms 2>/dev/null)" -f -- "$cur"))
      fi ;;
  esac
}
complete -F _xdkms xdkms
