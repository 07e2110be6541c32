/* ext4 images through e2fsprogs' libext2fs: the few operations xdkms needs (look up, stat,
 * list, read, create, rewrite, remove), each the way fuse2fs and mke2fs -d do it, behind plain
 * C types so that the Rust side never sees libext2fs's structures. Every function returns 0 or
 * an errcode_t (libext2fs's, or an errno value); xd_error_message names it. */

#include <errno.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include <et/com_err.h>
#include <ext2fs/ext2fs.h>

/* Conditions the library does not treat as errors but xdkms does before writing. */
#define XD_NEEDS_RECOVERY (-1L)
#define XD_NOT_CLEAN (-2L)
#define XD_NOT_A_DIRECTORY (-3L)
#define XD_NOT_EMPTY (-4L)

/* True when the inode's extra space holds `field` (e2fsprogs keeps this test private). */
#define FITS_IN_INODE(inode, field)                                                                \
    ((size_t)EXT2_GOOD_OLD_INODE_SIZE + (inode)->i_extra_isize >=                                          \
     offsetof(struct ext2_inode_large, field) + sizeof((inode)->field))

struct xd_attr {
    uint32_t mode;
    uint32_t uid;
    uint32_t gid;
    uint32_t links;
    uint64_t size;
    int64_t mtime;
};

const char *xd_error_message(long code)
{
    initialize_ext2_error_table();
    switch (code) {
    case XD_NEEDS_RECOVERY:
        return "its journal needs recovery: replay it with e2fsck -fy first";
    case XD_NOT_CLEAN:
        return "it was not cleanly unmounted or has errors recorded: check it with e2fsck -fy first";
    case XD_NOT_A_DIRECTORY:
        return "not a directory";
    case XD_NOT_EMPTY:
        return "directory not empty";
    default:
        return error_message(code);
    }
}

/* How xd_open opens: to read; to read and check it could be written; to write. */
#define XD_READ 0
#define XD_CHECK_WRITABLE 1
#define XD_WRITE 2

/* The filesystem in `path` starting `offset` bytes in. Writable only when it is clean: a
 * journal to replay or an unclean state is e2fsck's to settle, not ours to build on. `now`, when
 * not 0, is the time libext2fs stamps (superblock write time, new directories). */
long xd_open(const char *path, uint64_t offset, int access, int64_t now, ext2_filsys *out)
{
    char options[64];
    ext2_filsys fs = NULL;
    int flags = EXT2_FLAG_64BITS | (access == XD_WRITE ? EXT2_FLAG_RW : 0);
    errcode_t err;

    initialize_ext2_error_table();
    *out = NULL;
    snprintf(options, sizeof(options), "offset=%llu", (unsigned long long)offset);
    err = ext2fs_open2(path, options, flags, 0, 0, unix_io_manager, &fs);
    if (err)
        return err;
    if (now)
        fs->now = (time_t)now;
    if (access != XD_READ) {
        if (ext2fs_has_feature_journal_needs_recovery(fs->super))
            err = XD_NEEDS_RECOVERY;
        else if (!(fs->super->s_state & EXT2_VALID_FS) || (fs->super->s_state & EXT2_ERROR_FS))
            err = XD_NOT_CLEAN;
        else if (access == XD_WRITE)
            err = ext2fs_read_bitmaps(fs);
        if (err) {
            ext2fs_close_free(&fs);
            return err;
        }
    }
    *out = fs;
    return 0;
}

/* How many bytes the filesystem spans (blocks times block size). */
uint64_t xd_size(ext2_filsys fs)
{
    return ext2fs_blocks_count(fs->super) * (uint64_t)fs->blocksize;
}

/* Writes everything back (superblock, descriptors, bitmaps) when writable, and frees. */
long xd_close(ext2_filsys fs)
{
    return ext2fs_close_free(&fs);
}

/* Frees without writing: for a writable filesystem whose changes are being thrown away. */
void xd_abandon(ext2_filsys fs)
{
    fs->flags &= ~EXT2_FLAG_DIRTY;
    fs->flags &= ~EXT2_FLAG_RW;
    ext2fs_free(fs);
}

/* The inode named `name` (one component, symlinks not followed) in directory `dir`. */
long xd_lookup(ext2_filsys fs, uint32_t dir, const char *name, uint32_t *ino)
{
    ext2_ino_t found = 0;
    errcode_t err = ext2fs_lookup(fs, dir, name, (int)strlen(name), NULL, &found);
    *ino = found;
    return err;
}

static long read_large(ext2_filsys fs, uint32_t ino, struct ext2_inode_large *inode)
{
    memset(inode, 0, sizeof(*inode));
    return ext2fs_read_inode_full(fs, ino, (struct ext2_inode *)inode, sizeof(*inode));
}

long xd_stat(ext2_filsys fs, uint32_t ino, struct xd_attr *attr)
{
    struct ext2_inode_large inode;
    errcode_t err = read_large(fs, ino, &inode);
    if (err)
        return err;
    attr->mode = inode.i_mode;
    attr->uid = inode_uid(inode);
    attr->gid = inode_gid(inode);
    attr->links = inode.i_links_count;
    attr->size = EXT2_I_SIZE(&inode);
    attr->mtime = (int64_t)(int32_t)inode.i_mtime;
    if (FITS_IN_INODE(&inode, i_mtime_extra))
        attr->mtime += (int64_t)(inode.i_mtime_extra & EXT4_EPOCH_MASK) << 32;
    return 0;
}

typedef int (*xd_entry_fn)(void *context, const char *name, uint32_t name_len, uint32_t ino);

struct list_state {
    xd_entry_fn each;
    void *context;
};

static int list_entry(ext2_ino_t dir, int entry, struct ext2_dir_entry *dirent, int offset, int blocksize,
                      char *buf, void *private)
{
    struct list_state *state = private;
    unsigned int len = ext2fs_dirent_name_len(dirent);
    (void)dir;
    (void)entry;
    (void)offset;
    (void)blocksize;
    (void)buf;
    if (dirent->inode == 0 || len == 0)
        return 0;
    if ((len == 1 && dirent->name[0] == '.') || (len == 2 && dirent->name[0] == '.' && dirent->name[1] == '.'))
        return 0;
    return state->each(state->context, dirent->name, len, dirent->inode) ? DIRENT_ABORT : 0;
}

/* Calls `each` for every entry of directory `dir` but . and ..; a non-zero return stops. */
long xd_list(ext2_filsys fs, uint32_t dir, xd_entry_fn each, void *context)
{
    struct list_state state = { each, context };
    return ext2fs_dir_iterate2(fs, dir, 0, NULL, list_entry, &state);
}

/* A symlink's target into `buf` (`*len` bytes, no terminator). */
long xd_readlink(ext2_filsys fs, uint32_t ino, char *buf, size_t capacity, size_t *len)
{
    struct ext2_inode inode;
    ext2_file_t file;
    unsigned int got = 0;
    errcode_t err = ext2fs_read_inode(fs, ino, &inode);
    size_t size;

    if (err)
        return err;
    size = EXT2_I_SIZE(&inode);
    if (size > capacity)
        return ENAMETOOLONG;
    if (ext2fs_is_fast_symlink(&inode)) {
        memcpy(buf, (char *)inode.i_block, size);
        *len = size;
        return 0;
    }
    err = ext2fs_file_open(fs, ino, 0, &file);
    if (err)
        return err;
    err = ext2fs_file_read(file, buf, (unsigned int)size, &got);
    ext2fs_file_close(file);
    *len = got;
    return err;
}

/* Copies file `ino`'s content to `fd` (from its current offset). */
long xd_read_to_fd(ext2_filsys fs, uint32_t ino, int fd)
{
    char buf[65536];
    ext2_file_t file;
    errcode_t err = ext2fs_file_open(fs, ino, 0, &file);
    if (err)
        return err;
    for (;;) {
        unsigned int got = 0;
        char *at = buf;
        err = ext2fs_file_read(file, buf, sizeof(buf), &got);
        if (err || got == 0)
            break;
        while (got > 0) {
            ssize_t put = write(fd, at, got);
            if (put < 0 && errno == EINTR)
                continue;
            if (put <= 0) {
                err = put < 0 ? errno : EIO;
                goto out;
            }
            at += put;
            got -= (unsigned int)put;
        }
    }
out:
    ext2fs_file_close(file);
    return err;
}

/* Replaces file `ino`'s content with what `fd` holds from its current offset to its end. */
long xd_write_from_fd(ext2_filsys fs, uint32_t ino, int fd)
{
    char buf[65536];
    ext2_file_t file;
    errcode_t err = ext2fs_file_open(fs, ino, EXT2_FILE_WRITE, &file);
    errcode_t closed;
    if (err)
        return err;
    err = ext2fs_file_set_size2(file, 0);
    while (!err) {
        ssize_t got = read(fd, buf, sizeof(buf));
        char *at = buf;
        if (got < 0 && errno == EINTR)
            continue;
        if (got < 0) {
            err = errno;
            break;
        }
        if (got == 0)
            break;
        while (!err && got > 0) {
            unsigned int put = 0;
            err = ext2fs_file_write(file, at, (unsigned int)got, &put);
            if (!err && put == 0)
                err = EIO;
            at += put;
            got -= put;
        }
    }
    closed = ext2fs_file_close(file);
    return err ? err : closed;
}

/* Links `ino` into `dir` as `name`, growing the directory when its blocks are full. */
static long link_in(ext2_filsys fs, uint32_t dir, const char *name, uint32_t ino, int type)
{
    errcode_t err = ext2fs_link(fs, dir, name, ino, type);
    if (err == EXT2_ET_DIR_NO_SPACE) {
        err = ext2fs_expand_dir(fs, dir);
        if (!err)
            err = ext2fs_link(fs, dir, name, ino, type);
    }
    return err;
}

static void set_times(struct ext2_inode_large *inode, int64_t when)
{
    uint32_t epoch = (uint32_t)(((uint64_t)when >> 32) & EXT4_EPOCH_MASK);
    inode->i_mtime = inode->i_ctime = inode->i_atime = (uint32_t)when;
    if (FITS_IN_INODE(inode, i_mtime_extra)) {
        inode->i_mtime_extra = epoch;
        inode->i_ctime_extra = epoch;
        inode->i_atime_extra = epoch;
    }
}

/* Sets the permission bits (the type stays), owner and times of `ino` as `attr` says. */
long xd_set_attr(ext2_filsys fs, uint32_t ino, const struct xd_attr *attr)
{
    struct ext2_inode_large inode;
    errcode_t err = read_large(fs, ino, &inode);
    if (err)
        return err;
    inode.i_mode = (inode.i_mode & LINUX_S_IFMT) | (attr->mode & 07777);
    inode.i_uid = (uint16_t)attr->uid;
    ext2fs_set_i_uid_high(inode, attr->uid >> 16);
    inode.i_gid = (uint16_t)attr->gid;
    ext2fs_set_i_gid_high(inode, attr->gid >> 16);
    set_times(&inode, attr->mtime);
    return ext2fs_write_inode_full(fs, ino, (struct ext2_inode *)&inode, sizeof(inode));
}

/* Sets the permission bits and modification time of `ino` (a changed file: owner, other times'
 * meaning and extended attributes stay). */
long xd_touch(ext2_filsys fs, uint32_t ino, uint32_t mode, int64_t mtime)
{
    struct ext2_inode_large inode;
    errcode_t err = read_large(fs, ino, &inode);
    if (err)
        return err;
    inode.i_mode = (inode.i_mode & LINUX_S_IFMT) | (mode & 07777);
    inode.i_mtime = inode.i_ctime = (uint32_t)mtime;
    if (FITS_IN_INODE(&inode, i_mtime_extra)) {
        uint32_t epoch = (uint32_t)(((uint64_t)mtime >> 32) & EXT4_EPOCH_MASK);
        inode.i_mtime_extra = epoch;
        inode.i_ctime_extra = epoch;
    }
    return ext2fs_write_inode_full(fs, ino, (struct ext2_inode *)&inode, sizeof(inode));
}

/* A new empty regular file `name` in `dir`, as mke2fs -d makes one. */
long xd_create(ext2_filsys fs, uint32_t dir, const char *name, const struct xd_attr *attr, uint32_t *out)
{
    struct ext2_inode_large inode;
    ext2_ino_t ino;
    errcode_t err = ext2fs_new_inode(fs, dir, 010755, 0, &ino);
    if (err)
        return err;
    err = link_in(fs, dir, name, ino, EXT2_FT_REG_FILE);
    if (err)
        return err;
    ext2fs_inode_alloc_stats2(fs, ino, +1, 0);
    memset(&inode, 0, sizeof(inode));
    inode.i_mode = LINUX_S_IFREG | (attr->mode & 07777);
    inode.i_links_count = 1;
    inode.i_uid = (uint16_t)attr->uid;
    ext2fs_set_i_uid_high(inode, attr->uid >> 16);
    inode.i_gid = (uint16_t)attr->gid;
    ext2fs_set_i_gid_high(inode, attr->gid >> 16);
    set_times(&inode, attr->mtime);
    if (ext2fs_has_feature_inline_data(fs->super)) {
        inode.i_flags |= EXT4_INLINE_DATA_FL;
    } else if (ext2fs_has_feature_extents(fs->super)) {
        ext2_extent_handle_t handle;
        err = ext2fs_extent_open2(fs, ino, (struct ext2_inode *)&inode, &handle);
        if (err)
            return err;
        ext2fs_extent_free(handle);
    }
    err = ext2fs_write_new_inode(fs, ino, (struct ext2_inode *)&inode);
    if (!err && (inode.i_flags & EXT4_INLINE_DATA_FL))
        err = ext2fs_inline_data_init(fs, ino);
    *out = ino;
    return err;
}

long xd_mkdir(ext2_filsys fs, uint32_t dir, const char *name, const struct xd_attr *attr, uint32_t *out)
{
    errcode_t err = ext2fs_mkdir(fs, dir, 0, name);
    if (err == EXT2_ET_DIR_NO_SPACE) {
        err = ext2fs_expand_dir(fs, dir);
        if (!err)
            err = ext2fs_mkdir(fs, dir, 0, name);
    }
    if (!err)
        err = xd_lookup(fs, dir, name, out);
    if (!err)
        err = xd_set_attr(fs, *out, attr);
    return err;
}

long xd_symlink(ext2_filsys fs, uint32_t dir, const char *name, const char *target, const struct xd_attr *attr)
{
    uint32_t ino = 0;
    errcode_t err = ext2fs_symlink(fs, dir, 0, name, target);
    if (err == EXT2_ET_DIR_NO_SPACE) {
        err = ext2fs_expand_dir(fs, dir);
        if (!err)
            err = ext2fs_symlink(fs, dir, 0, name, target);
    }
    if (!err)
        err = xd_lookup(fs, dir, name, &ino);
    if (!err)
        err = xd_set_attr(fs, ino, attr);
    return err;
}

static int count_entry(void *context, const char *name, uint32_t len, uint32_t ino)
{
    (void)name;
    (void)len;
    (void)ino;
    ++*(int *)context;
    return 1;
}

/* Drops one link of `ino`; with the last one, frees its blocks, extended attribute block and
 * inode (fuse2fs's remove_inode). */
static long release(ext2_filsys fs, uint32_t ino)
{
    struct ext2_inode_large inode;
    errcode_t err = read_large(fs, ino, &inode);
    if (err)
        return err;
    if (inode.i_links_count > 0)
        inode.i_links_count--;
    if (LINUX_S_ISDIR(inode.i_mode))
        inode.i_links_count = 0;
    if (inode.i_links_count == 0) {
        inode.i_dtime = fs->now ? (uint32_t)fs->now : (uint32_t)time(NULL);
        err = ext2fs_free_ext_attr(fs, ino, &inode);
        if (!err && ext2fs_inode_has_valid_blocks2(fs, (struct ext2_inode *)&inode))
            err = ext2fs_punch(fs, ino, (struct ext2_inode *)&inode, NULL, 0, ~0ULL);
        if (err)
            return err;
        ext2fs_inode_alloc_stats2(fs, ino, -1, LINUX_S_ISDIR(inode.i_mode));
    }
    return ext2fs_write_inode_full(fs, ino, (struct ext2_inode *)&inode, sizeof(inode));
}

/* Removes `name` from `dir`: a file or symlink (its inode freed with its last link), or an
 * empty directory (the parent's link count follows). */
long xd_remove(ext2_filsys fs, uint32_t dir, const char *name)
{
    struct ext2_inode_large inode;
    uint32_t ino = 0;
    int entries = 0;
    errcode_t err = xd_lookup(fs, dir, name, &ino);
    if (err)
        return err;
    err = read_large(fs, ino, &inode);
    if (err)
        return err;
    if (LINUX_S_ISDIR(inode.i_mode)) {
        err = xd_list(fs, ino, count_entry, &entries);
        if (err)
            return err;
        if (entries)
            return XD_NOT_EMPTY;
    }
    err = ext2fs_unlink(fs, dir, name, ino, 0);
    if (!err)
        err = release(fs, ino);
    if (!err && LINUX_S_ISDIR(inode.i_mode)) {
        struct ext2_inode_large parent;
        err = read_large(fs, dir, &parent);
        if (!err && parent.i_links_count > 1) {
            parent.i_links_count--;
            err = ext2fs_write_inode_full(fs, dir, (struct ext2_inode *)&parent, sizeof(parent));
        }
    }
    return err;
}

/* The errcode_t values the Rust side tells apart. */
long xd_code_block_alloc_fail(void) { return EXT2_ET_BLOCK_ALLOC_FAIL; }
long xd_code_inode_alloc_fail(void) { return EXT2_ET_INODE_ALLOC_FAIL; }
long xd_code_not_found(void) { return EXT2_ET_FILE_NOT_FOUND; }
long xd_code_bad_magic(void) { return EXT2_ET_BAD_MAGIC; }
