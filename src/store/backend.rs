//! The redb storage backend of a store opened with `sync: false`: redb's own file backend
//! with `sync_data` turned into a no-op (file I/O).
//!
//! # Why this is enough for tests of logic, and not for production
//! Every commit still writes its pages and its header with `pwrite` before it returns, in
//! the same order as with fsync; only the wait for the disk is skipped. Those writes live in
//! the kernel's page cache, which outlives the process: a process that is killed (SIGKILL,
//! panic, abort) leaves a file that the next open reads exactly as the last commit left it.
//! Only a power loss or a kernel crash, which drops the page cache, can lose or reorder
//! them. Tests of logic (the contract suite, the model-based property test) crash
//! processes, not machines, so they need no fsync; the crash test and the seed tests keep
//! real fsyncs.

use std::fs::File;
use std::ops::Bound;

use redb::StorageBackend;
use redb::backends::FileBackend;

/// redb's file backend without fsync (see the module docs for what that gives up).
#[derive(Debug)]
pub(crate) struct UnsyncedFile(FileBackend);

impl UnsyncedFile {
    pub(crate) fn new(file: File) -> Result<Self, redb::DatabaseError> {
        FileBackend::new(file).map(Self)
    }
}

impl StorageBackend for UnsyncedFile {
    fn len(&self) -> Result<u64, std::io::Error> {
        self.0.len()
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), std::io::Error> {
        self.0.read(offset, out)
    }

    fn set_len(&self, len: u64) -> Result<(), std::io::Error> {
        self.0.set_len(len)
    }

    fn sync_data(&self) -> Result<(), std::io::Error> {
        Ok(())
    }

    fn write(&self, offset: u64, data: &[u8]) -> Result<(), std::io::Error> {
        self.0.write(offset, data)
    }

    fn close(&self) -> Result<(), std::io::Error> {
        self.0.close()
    }

    fn try_lock_range(
        &self,
        start: Bound<u64>,
        end: Bound<u64>,
    ) -> Result<bool, redb::BackendError> {
        self.0.try_lock_range(start, end)
    }

    fn try_lock_shared_range(
        &self,
        start: Bound<u64>,
        end: Bound<u64>,
    ) -> Result<bool, redb::BackendError> {
        self.0.try_lock_shared_range(start, end)
    }

    fn lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), redb::BackendError> {
        self.0.lock_range(start, end)
    }

    fn lock_shared_range(
        &self,
        start: Bound<u64>,
        end: Bound<u64>,
    ) -> Result<(), redb::BackendError> {
        self.0.lock_shared_range(start, end)
    }

    fn unlock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), redb::BackendError> {
        self.0.unlock_range(start, end)
    }

    fn query_lock_range(
        &self,
        start: Bound<u64>,
        end: Bound<u64>,
    ) -> Result<bool, redb::BackendError> {
        self.0.query_lock_range(start, end)
    }
}
