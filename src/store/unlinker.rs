//! Removing swept blob files on worker threads, after their rows are committed
//! (filesystem I/O).
//!
//! A sweep batch's transaction removes rows; the batch's files are removed here, while the
//! next batch's transaction runs. Unlinking is most of a sweep's cost (a metadata update
//! each, often a wait for the disk), and several at once in different shard directories
//! overlap those waits.
//!
//! # Why it is safe
//! - A file is handed over only once the removal of its row is durable (its batch, or a
//!   later one, committed with fsync), so a crash at any point leaves at worst files
//!   without rows: garbage that recovery re-verifies and adopts or deletes, never a row
//!   without its file.
//! - Each file travels with the flight of its digest (see [`crate::store::flight`]), held
//!   until the file is gone: an ingest of the same digest waits for it, and cannot rename
//!   a new file into place that this unlink would then remove.
//! - Dropping an [`Unlinker`] (a sweep that failed half-way) still removes every file
//!   handed over, since their rows are already gone.

use std::fs;
use std::io;
use std::path::PathBuf;
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use crate::store::error::{Result, StoreError};
use crate::store::flight::{FlightGuard, lock};

/// Files per job: small enough to spread a batch over the workers.
const JOB: usize = 64;

/// One file to remove and the flight that keeps its digest from being written meanwhile.
pub(crate) type Doomed = (PathBuf, FlightGuard);

/// Worker threads that remove files handed to them.
#[derive(Debug)]
pub(crate) struct Unlinker {
    send: Option<SyncSender<Vec<Doomed>>>,
    workers: Vec<JoinHandle<()>>,
    /// The first failure of any worker.
    failed: Arc<Mutex<Option<StoreError>>>,
}

impl Unlinker {
    /// Starts `threads` workers (none when no thread can be started: then
    /// [`Unlinker::remove`] unlinks on the caller's thread).
    pub(crate) fn start(threads: usize) -> Self {
        // Two jobs per worker queued at most: the sweep's memory (and the flights it
        // holds) stays bounded when unlinking is slower than the transactions.
        let (send, queue) = mpsc::sync_channel::<Vec<Doomed>>(threads * 2);
        let queue = Arc::new(Mutex::new(queue));
        let failed = Arc::new(Mutex::new(None));
        let workers: Vec<JoinHandle<()>> = (0..threads)
            .filter_map(|n| {
                let (queue, failed) = (Arc::clone(&queue), Arc::clone(&failed));
                std::thread::Builder::new()
                    .name(format!("kiln-store-unlink-{n}"))
                    .spawn(move || work(&queue, &failed))
                    .map_err(|err| tracing::debug!(error = %err, "no unlink thread"))
                    .ok()
            })
            .collect();
        Self {
            send: (!workers.is_empty()).then_some(send),
            workers,
            failed,
        }
    }

    /// Removes `files` (now or soon); fails if an earlier removal failed.
    pub(crate) fn remove(&self, mut files: Vec<Doomed>) -> Result<()> {
        if let Some(err) = lock(&self.failed).take() {
            return Err(err);
        }
        let Some(send) = self.send.as_ref() else {
            return remove_all(files);
        };
        while !files.is_empty() {
            let job: Vec<Doomed> = files.drain(..JOB.min(files.len())).collect();
            if let Err(mpsc::SendError(job)) = send.send(job) {
                // Every worker is gone (they only stop when the queue closes): do it here.
                remove_all(job)?;
            }
        }
        Ok(())
    }

    /// Waits until every file handed over is removed; the first failure, if any.
    pub(crate) fn finish(mut self) -> Result<()> {
        self.join();
        match lock(&self.failed).take() {
            Some(err) => Err(err),
            None => Ok(()),
        }
    }

    fn join(&mut self) {
        drop(self.send.take());
        for worker in self.workers.drain(..) {
            // A worker only panics if unlink itself does; its files stay as garbage.
            let _ = worker.join();
        }
    }
}

impl Drop for Unlinker {
    fn drop(&mut self) {
        self.join();
    }
}

fn work(queue: &Mutex<Receiver<Vec<Doomed>>>, failed: &Mutex<Option<StoreError>>) {
    loop {
        // Hold the queue's lock only to take a job, not while unlinking it.
        let job = lock(queue).recv();
        let Ok(job) = job else { return };
        if let Err(err) = remove_all(job) {
            lock(failed).get_or_insert(err);
        }
    }
}

/// Removes each file (one already gone is fine), then releases its flight. Goes on past a
/// failure, so that one bad file does not strand the others; returns the first failure.
fn remove_all(files: Vec<Doomed>) -> Result<()> {
    let mut first = None;
    for (path, flight) in files {
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(err) if err.kind() == io::ErrorKind::NotFound => {}
            Err(err) => {
                first.get_or_insert(StoreError::io("remove blob", &path)(err));
            }
        }
        drop(flight);
    }
    first.map_or(Ok(()), Err)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oci::digest::Digest;
    use crate::store::flight::Flights;

    #[test]
    fn every_file_handed_over_is_gone_and_its_flight_released_after_finish() {
        let dir = tempfile::tempdir().unwrap();
        let flights = Arc::new(Flights::default());
        for threads in [0, 1, 3] {
            let unlinker = Unlinker::start(threads);
            let mut digests = Vec::new();
            for batch in 0..3u8 {
                let mut files = Vec::new();
                for n in 0..150u8 {
                    let digest = Digest::of(&[threads as u8, batch, n]);
                    let path = dir.path().join(digest.hex());
                    if n % 7 != 0 {
                        // Some are already gone: not an error.
                        fs::write(&path, b"x").unwrap();
                    }
                    files.push((path, flights.try_claim(digest).unwrap()));
                    digests.push(digest);
                }
                unlinker.remove(files).unwrap();
            }
            unlinker.finish().unwrap();
            assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0, "{threads}");
            for digest in digests {
                assert!(flights.try_claim(digest).is_some(), "flight released");
            }
        }
    }

    #[test]
    fn a_failed_removal_is_reported_and_the_others_still_happen() {
        let dir = tempfile::tempdir().unwrap();
        let flights = Arc::new(Flights::default());
        // A non-empty directory cannot be removed as a file.
        let stuck = dir.path().join("stuck");
        fs::create_dir(&stuck).unwrap();
        fs::write(stuck.join("inside"), b"x").unwrap();
        let fine = dir.path().join("fine");
        fs::write(&fine, b"x").unwrap();
        let unlinker = Unlinker::start(2);
        unlinker
            .remove(vec![
                (stuck.clone(), flights.try_claim(Digest::of(b"a")).unwrap()),
                (fine.clone(), flights.try_claim(Digest::of(b"b")).unwrap()),
            ])
            .unwrap();
        let err = unlinker.finish().unwrap_err();
        assert!(err.to_string().contains("remove blob"), "{err}");
        assert!(!fine.exists());
        assert!(stuck.exists());
    }
}
