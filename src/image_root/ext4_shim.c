/* ext4 images through e2fsprogs' libext2fs: the few operations xdkms needs (look up, stat,
 * list, read, create, rewrite, remove), each the way fuse2fs and mke2fs -d do it, behind plain
 * C types so that the Rust side never sees libext2fs's structures. Every function returns 0 or
 * an errcode_t (libext2fs's, or an errno value); xd_error_message names it. */

#include <errno.h>
#include <stdlib.h>
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

/* ---- Staged writes: an edit made in place and committed through the filesystem's journal ----
 *
 * A filesystem opened with xd_open_staged reads and writes through the staging I/O manager
 * below, over unix_io: every write is kept in memory, whole filesystem blocks, and read back
 * from there, so that an edit that fails leaves the image as it was. After the close, the Rust
 * side writes the blocks the image had free (nothing in the old image refers to them), then
 * commits the others as one journal transaction and writes them in place (ext4_in_place.rs).
 * Past XD_STAGE_BUDGET bytes kept, blocks the image had free go to it at once instead (a big
 * change then leaves bytes in free blocks when it fails, never a changed filesystem). */

#define XD_STAGE_BUDGET (64u << 20)

struct xd_stage {
    /* Open-addressing table of kept blocks: key block + 1 (0: empty slot), value its bytes. */
    uint64_t *keys;
    unsigned char **blocks;
    size_t capacity;
    size_t used;
    /* The block bitmap as the image had it, and the filesystem's block size (0 until
     * xd_open_staged has read them: writes before that are refused). */
    ext2fs_block_bitmap was_used;
    blk64_t first_data_block;
    blk64_t blocks_count;
    unsigned int block_size;
    io_channel real;
    /* Bytes kept, and whether blocks the image had free now go to it at once (those kept
     * before then have been written and their copies freed: slot pointers NULL). */
    size_t kept_bytes;
    int spilled;
};

/* The stage the next staging open attaches to (io managers' open takes no context). */
static _Thread_local struct xd_stage *opening_stage;

static io_manager staging_io_manager(void);

static struct xd_stage *stage_of(io_channel channel)
{
    return (struct xd_stage *)channel->private_data;
}

static size_t slot_of(const struct xd_stage *stage, blk64_t block)
{
    return (size_t)((block * 0x9E3779B97F4A7C15ULL) >> 20) & (stage->capacity - 1);
}

/* The kept copy of `block`, or NULL. */
static unsigned char *kept(const struct xd_stage *stage, blk64_t block)
{
    size_t slot;
    if (!stage->capacity)
        return NULL;
    for (slot = slot_of(stage, block); stage->keys[slot]; slot = (slot + 1) & (stage->capacity - 1))
        if (stage->keys[slot] == block + 1)
            return stage->blocks[slot];
    return NULL;
}

static errcode_t grow(struct xd_stage *stage)
{
    size_t capacity = stage->capacity ? stage->capacity * 2 : 1024, i;
    uint64_t *keys = calloc(capacity, sizeof(*keys));
    unsigned char **blocks = calloc(capacity, sizeof(*blocks));
    if (!keys || !blocks) {
        free(keys);
        free(blocks);
        return EXT2_ET_NO_MEMORY;
    }
    for (i = 0; i < stage->capacity; i++) {
        size_t slot;
        if (!stage->keys[i])
            continue;
        for (slot = (size_t)(((stage->keys[i] - 1) * 0x9E3779B97F4A7C15ULL) >> 20) & (capacity - 1); keys[slot];
             slot = (slot + 1) & (capacity - 1))
            ;
        keys[slot] = stage->keys[i];
        blocks[slot] = stage->blocks[i];
    }
    free(stage->keys);
    free(stage->blocks);
    stage->keys = keys;
    stage->blocks = blocks;
    stage->capacity = capacity;
    return 0;
}

/* The kept copy of `block`, made from the image's bytes when there is none yet. */
static errcode_t keep(struct xd_stage *stage, blk64_t block, unsigned char **out)
{
    size_t slot;
    unsigned char *copy = kept(stage, block);
    /* A block written out by spill() is never kept again (it was free: it goes straight out). */
    int channel_size = stage->real->block_size;
    errcode_t err;
    if (copy) {
        *out = copy;
        return 0;
    }
    if ((stage->used + 1) * 2 > stage->capacity && (err = grow(stage)))
        return err;
    copy = malloc(stage->block_size);
    if (!copy)
        return EXT2_ET_NO_MEMORY;
    /* The channel's block size divides the filesystem's (1 KiB for the superblock, or the
     * block size itself). */
    err = io_channel_read_blk64(stage->real, block * stage->block_size / (unsigned int)channel_size,
                                -(int)stage->block_size, copy);
    if (err) {
        free(copy);
        return err;
    }
    for (slot = slot_of(stage, block); stage->keys[slot]; slot = (slot + 1) & (stage->capacity - 1))
        ;
    stage->keys[slot] = block + 1;
    stage->blocks[slot] = copy;
    stage->used++;
    stage->kept_bytes += stage->block_size;
    *out = copy;
    return 0;
}

/* True when the image had `block` free: nothing in it refers to the block. */
static int was_free(const struct xd_stage *stage, blk64_t block)
{
    return block >= stage->first_data_block && block < stage->blocks_count &&
           !ext2fs_test_block_bitmap2(stage->was_used, block);
}

/* Writes every kept block the image had free to it and frees their copies (past the budget). */
static errcode_t spill(struct xd_stage *stage)
{
    size_t i;
    int channel_size = stage->real->block_size;
    stage->spilled = 1;
    for (i = 0; i < stage->capacity; i++) {
        blk64_t block = stage->keys[i] - 1;
        errcode_t err;
        if (!stage->keys[i] || !stage->blocks[i] || !was_free(stage, block))
            continue;
        err = io_channel_write_blk64(stage->real, block * stage->block_size / (unsigned int)channel_size,
                                     -(int)stage->block_size, stage->blocks[i]);
        if (err)
            return err;
        free(stage->blocks[i]);
        stage->blocks[i] = NULL;
        stage->kept_bytes -= stage->block_size;
    }
    return 0;
}

static uint64_t byte_count(io_channel channel, int count)
{
    return count < 0 ? (uint64_t)-(int64_t)count : (uint64_t)count * (uint64_t)channel->block_size;
}

static errcode_t staging_open(const char *name, int flags, io_channel *channel)
{
    struct xd_stage *stage = opening_stage;
    io_channel io;
    errcode_t err;
    if (!stage)
        return EXT2_ET_INVALID_ARGUMENT;
    io = calloc(1, sizeof(*io));
    if (!io)
        return EXT2_ET_NO_MEMORY;
    io->name = strdup(name);
    err = io->name ? unix_io_manager->open(name, flags & ~IO_FLAG_THREADS, &stage->real) : EXT2_ET_NO_MEMORY;
    if (err) {
        free(io->name);
        free(io);
        return err;
    }
    io->magic = EXT2_ET_MAGIC_IO_CHANNEL;
    io->manager = staging_io_manager();
    io->block_size = 1024;
    io->refcount = 1;
    io->private_data = stage;
    *channel = io;
    return 0;
}

static errcode_t staging_close(io_channel channel)
{
    struct xd_stage *stage = stage_of(channel);
    errcode_t err = 0;
    if (--channel->refcount > 0)
        return 0;
    if (stage->real)
        err = io_channel_close(stage->real);
    stage->real = NULL;
    free(channel->name);
    free(channel);
    return err;
}

static errcode_t staging_set_blksize(io_channel channel, int blksize)
{
    channel->block_size = blksize;
    return io_channel_set_blksize(stage_of(channel)->real, blksize);
}

static errcode_t staging_read_blk64(io_channel channel, unsigned long long block, int count, void *data)
{
    struct xd_stage *stage = stage_of(channel);
    uint64_t start = block * (uint64_t)channel->block_size, end = start + byte_count(channel, count), at;
    errcode_t err = io_channel_read_blk64(stage->real, block, count, data);
    if (err || !stage->used)
        return err;
    for (at = start; at < end;) {
        blk64_t fs_block = at / stage->block_size;
        uint64_t block_end = (fs_block + 1) * (uint64_t)stage->block_size, piece_end = end < block_end ? end : block_end;
        unsigned char *copy = kept(stage, fs_block);
        if (copy)
            memcpy((unsigned char *)data + (at - start), copy + (at - fs_block * stage->block_size), piece_end - at);
        at = piece_end;
    }
    return 0;
}

static errcode_t staging_read_blk(io_channel channel, unsigned long block, int count, void *data)
{
    return staging_read_blk64(channel, block, count, data);
}

static errcode_t staging_write_blk64(io_channel channel, unsigned long long block, int count, const void *data)
{
    struct xd_stage *stage = stage_of(channel);
    uint64_t start = block * (uint64_t)channel->block_size, end = start + byte_count(channel, count), at;
    if (!stage->block_size)
        return EXT2_ET_OP_NOT_SUPPORTED;
    for (at = start; at < end;) {
        blk64_t fs_block = at / stage->block_size;
        uint64_t block_end = (fs_block + 1) * (uint64_t)stage->block_size, piece_end = end < block_end ? end : block_end;
        const unsigned char *piece = (const unsigned char *)data + (at - start);
        errcode_t err;
        if (stage->spilled && was_free(stage, fs_block)) {
            /* The piece starts at a multiple of the channel's block size. */
            err = io_channel_write_blk64(stage->real, at / (uint64_t)channel->block_size, -(int)(piece_end - at), piece);
        } else {
            unsigned char *copy;
            err = keep(stage, fs_block, &copy);
            if (!err)
                memcpy(copy + (at - fs_block * stage->block_size), piece, piece_end - at);
            if (!err && !stage->spilled && stage->kept_bytes > XD_STAGE_BUDGET)
                err = spill(stage);
        }
        if (err)
            return err;
        at = piece_end;
    }
    return 0;
}

static errcode_t staging_write_blk(io_channel channel, unsigned long block, int count, const void *data)
{
    return staging_write_blk64(channel, block, count, data);
}

static errcode_t staging_zeroout(io_channel channel, unsigned long long block, unsigned long long count)
{
    static const unsigned char zeros[65536];
    unsigned long long per_write = sizeof(zeros) / (unsigned long long)channel->block_size;
    while (count > 0) {
        unsigned long long now = count < per_write ? count : per_write;
        errcode_t err = staging_write_blk64(channel, block, (int)now, zeros);
        if (err)
            return err;
        block += now;
        count -= now;
    }
    return 0;
}

static errcode_t staging_flush(io_channel channel)
{
    return io_channel_flush(stage_of(channel)->real);
}

static errcode_t staging_set_option(io_channel channel, const char *option, const char *arg)
{
    return stage_of(channel)->real->manager->set_option(stage_of(channel)->real, option, arg);
}

static errcode_t staging_get_stats(io_channel channel, io_stats *stats)
{
    return stage_of(channel)->real->manager->get_stats(stage_of(channel)->real, stats);
}

static struct struct_io_manager staging_manager = {
    .magic = EXT2_ET_MAGIC_IO_MANAGER,
    .name = "xdkms staging I/O manager",
    .open = staging_open,
    .close = staging_close,
    .set_blksize = staging_set_blksize,
    .read_blk = staging_read_blk,
    .write_blk = staging_write_blk,
    .flush = staging_flush,
    /* No write_byte: the superblock is then written whole, as a block. */
    .set_option = staging_set_option,
    .get_stats = staging_get_stats,
    .read_blk64 = staging_read_blk64,
    .write_blk64 = staging_write_blk64,
    .zeroout = staging_zeroout,
};

static io_manager staging_io_manager(void)
{
    return &staging_manager;
}

struct xd_stage *xd_stage_new(void)
{
    return calloc(1, sizeof(struct xd_stage));
}

void xd_stage_free(struct xd_stage *stage)
{
    size_t i;
    for (i = 0; i < stage->capacity; i++)
        free(stage->blocks[i]);
    free(stage->keys);
    free(stage->blocks);
    if (stage->was_used)
        ext2fs_free_block_bitmap(stage->was_used);
    free(stage);
}

/* How many slots `stage`'s table has. */
size_t xd_stage_capacity(const struct xd_stage *stage)
{
    return stage->capacity;
}

/* The kept copy in table slot `index` (NULL when the slot is empty or its copy was written out)
 * and its block; `*was_free` tells whether the image had that block free. */
const unsigned char *xd_stage_slot(const struct xd_stage *stage, size_t index, uint64_t *block, int *was_free_out)
{
    if (index >= stage->capacity || !stage->keys[index])
        return NULL;
    *block = stage->keys[index] - 1;
    *was_free_out = was_free(stage, *block);
    return stage->blocks[index];
}

/* The clean filesystem in `path`, `offset` bytes in, opened to write through `stage`. */
long xd_open_staged(const char *path, uint64_t offset, int64_t now, struct xd_stage *stage, ext2_filsys *out)
{
    char options[64];
    ext2_filsys fs = NULL;
    errcode_t err;

    initialize_ext2_error_table();
    *out = NULL;
    snprintf(options, sizeof(options), "offset=%llu", (unsigned long long)offset);
    opening_stage = stage;
    err = ext2fs_open2(path, options, EXT2_FLAG_64BITS | EXT2_FLAG_RW, 0, 0, staging_io_manager(), &fs);
    opening_stage = NULL;
    if (err)
        return err;
    if (now)
        fs->now = (time_t)now;
    if (ext2fs_has_feature_journal_needs_recovery(fs->super))
        err = XD_NEEDS_RECOVERY;
    else if (!(fs->super->s_state & EXT2_VALID_FS) || (fs->super->s_state & EXT2_ERROR_FS))
        err = XD_NOT_CLEAN;
    if (!err)
        err = ext2fs_read_bitmaps(fs);
    if (!err)
        err = ext2fs_copy_bitmap(fs->block_map, &stage->was_used);
    if (err) {
        ext2fs_close_free(&fs);
        return err;
    }
    stage->first_data_block = fs->super->s_first_data_block;
    stage->blocks_count = ext2fs_blocks_count(fs->super);
    stage->block_size = fs->blocksize;
    *out = fs;
    return 0;
}

/* The filesystem block holding each block of the journal inode's file, in file order, into
 * `out` (`capacity` entries); `*len` is how many the journal has (0 for a hole). */
struct journal_map {
    uint64_t *out;
    size_t capacity;
    size_t len;
};

static int map_journal_block(ext2_filsys fs, blk64_t *block, e2_blkcnt_t index, blk64_t ref_block, int ref_offset,
                             void *private)
{
    struct journal_map *map = private;
    (void)fs;
    (void)ref_block;
    (void)ref_offset;
    if (index < 0)
        return 0;
    if ((size_t)index >= map->capacity)
        return BLOCK_ABORT;
    map->out[index] = *block;
    if ((size_t)index + 1 > map->len)
        map->len = (size_t)index + 1;
    return 0;
}

long xd_journal_map(ext2_filsys fs, uint64_t *out, size_t capacity, size_t *len)
{
    struct journal_map map = { out, capacity, 0 };
    errcode_t err;
    memset(out, 0, capacity * sizeof(*out));
    err = ext2fs_block_iterate3(fs, fs->super->s_journal_inum, BLOCK_FLAG_READ_ONLY | BLOCK_FLAG_DATA_ONLY, NULL,
                                map_journal_block, &map);
    *len = map.len;
    return err;
}

/* How many bytes the filesystem spans (blocks times block size). */
uint64_t xd_size(ext2_filsys fs)
{
    return ext2fs_blocks_count(fs->super) * (uint64_t)fs->blocksize;
}

uint64_t xd_block_size(ext2_filsys fs)
{
    return fs->blocksize;
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

/* Reads up to `len` bytes of file `ino` from `offset` into `buf`; `*got` says how many (fewer
 * only at the end of the file). */
long xd_read_at(ext2_filsys fs, uint32_t ino, uint64_t offset, char *buf, size_t len, size_t *got)
{
    ext2_file_t file;
    errcode_t err = ext2fs_file_open(fs, ino, 0, &file);
    *got = 0;
    if (err)
        return err;
    err = ext2fs_file_llseek(file, offset, EXT2_SEEK_SET, NULL);
    while (!err && *got < len) {
        unsigned int chunk = len - *got > (1u << 30) ? (1u << 30) : (unsigned int)(len - *got);
        unsigned int read = 0;
        err = ext2fs_file_read(file, buf + *got, chunk, &read);
        if (read == 0)
            break;
        *got += read;
    }
    ext2fs_file_close(file);
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
