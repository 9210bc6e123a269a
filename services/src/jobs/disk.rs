//! Free space on the data directory's file system.

use std::path::Path;

use super::{BatchError, Jobs};

impl Jobs {
    /// `insufficient_storage` unless the data directory has `needed` bytes free.
    pub fn check_space(&self, needed: u64) -> Result<(), BatchError> {
        match free_bytes(&self.dir) {
            Some(free) if free < needed => Err(BatchError::InsufficientStorage { free, needed }),
            _ => Ok(()),
        }
    }
}

/// Bytes free to an unprivileged writer on the file system of `path` (None where that cannot be read).
fn free_bytes(path: &Path) -> Option<u64> {
    #[cfg(unix)]
    {
        use std::os::unix::ffi::OsStrExt;
        let c = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
        let mut stat = std::mem::MaybeUninit::<libc::statvfs>::zeroed();
        // SAFETY: `c` is a NUL-terminated path and `stat` a buffer of the right type; it is read only
        // after statvfs reports success.
        let stat = unsafe {
            if libc::statvfs(c.as_ptr(), stat.as_mut_ptr()) != 0 {
                return None;
            }
            stat.assume_init()
        };
        Some(stat.f_bavail as u64 * stat.f_frsize as u64)
    }
    #[cfg(not(unix))]
    {
        let _ = path;
        None
    }
}
