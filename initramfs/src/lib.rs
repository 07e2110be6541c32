//! Linux initramfs images: newc archives, the kernel's segment layout rules and its codecs.
//! Knows nothing of kernel modules.

pub mod codec;
pub mod image;
pub mod newc;
pub mod spool;
pub mod stream;

pub use codec::{Codec, Level};
pub use image::{ImageError, Tree};
pub use newc::{Data, Entry};
